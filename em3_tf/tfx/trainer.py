"""TFX Trainer user code: `run_fn` trains EM3 on transformed examples and exports it.

`fn_args.custom_config` keys (set by `pipelines/pipeline.py` from `PipelineConfig`):
  - `preset` (an `EM3Config` preset) and `em3_overrides` (fields set by the user): the model
    is the preset, then the Tuner's (or imported) best hyper-parameters, then the overrides;
  - `epochs` (the most epochs), `patience` (early stopping on the eval split's AUC, best
    weights restored; 0 trains every epoch), `batch_size`, `seed`;
  - `distribute`: `"auto"` (MirroredStrategy over the GPUs if any, else the default
    strategy), `"mirrored"` (MirroredStrategy over GPUs, or over the logical CPUs when there
    is no GPU), `"default"`;
  - `mixed_precision`: use the `mixed_float16` Keras policy (GPUs);
  - `model_name`: the name served models carry (for warm-up requests);
  - `item_catalog_uri`: added by `pipelines.components.EM3Trainer` from its `item_catalog`.
"""

import numpy as np
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from em3_tf import features as F
from em3_tf._tf import keras, tf
from em3_tf.catalog import ItemCatalog
from em3_tf.config import EM3Config
from em3_tf.export import export_saved_model
from em3_tf.tfx.preprocessing import CATEGORICAL, DENSE_FEATURES, vocabulary_name
from em3_tf.training import callbacks, compile_ranker

CATALOG_KEY = "item_catalog_uri"


def choose_strategy(kind="auto") -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for the devices present (see the module docstring)."""
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "auto":
        return tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
    if kind == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if kind == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"`distribute` must be 'auto', 'mirrored' or 'default', got {kind!r}.")


def transformed_vocabularies(tft_output, names):
    """`{feature: sorted int ids}` from the Transform's `tft.vocabulary` files."""
    return {n: np.array(sorted(int(v) for v in tft_output.vocabulary_by_name(vocabulary_name(n))),
                        np.int64) for n in names}


def _dataset(fn_args, files, tft_output, batch_size, seed, repeat):
    return fn_args.data_accessor.tf_dataset_factory(
        files, tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle=repeat,
                                              shuffle_seed=seed, num_epochs=None if repeat else 1),
        tft_output.transformed_metadata.schema)


def _warmup_examples(model_vocab, catalog: ItemCatalog, context_features, count=8):
    """`count` serialized requests: one known user with a 5-item history (mixed feedback)
    against the first catalog items."""
    history = catalog.item_ids[count:count + 5]
    rows = {F.USER_ID: np.repeat(model_vocab[F.USER_ID][:1], count),
            F.ITEM_ID: catalog.item_ids[:count],
            F.HISTORY: np.tile(history, (count, 1)),
            F.HISTORY_LABELS: np.tile(np.arange(len(history)) % 2, (count, 1)),
            F.HISTORY_RATINGS: np.tile(np.arange(len(history)) % 5 + 1, (count, 1)),
            F.HISTORY_SECONDS: np.tile(3600 * (np.arange(len(history)) + 1), (count, 1)),
            F.USER_COUNT: np.full(count, len(history)),
            F.USER_POSITIVES: np.full(count, len(history) // 2)}
    for name in context_features:
        rows[name] = np.repeat(model_vocab[name][:1], count)
    return F.to_examples(rows)


def hyperparameter_values(fn_args) -> dict:
    """`EM3Config` overrides from the Tuner's (or an imported) best hyper-parameters, if any."""
    from em3_tf.tuning import values_of
    return values_of(getattr(fn_args, "hyperparameters", None))


def run_fn(fn_args):
    custom = dict(fn_args.custom_config or {})
    previous_policy = keras.mixed_precision.global_policy()
    if custom.get("mixed_precision"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        _run(fn_args, custom)
    finally:  # LocalDagRunner runs every component in this one process
        keras.mixed_precision.set_global_policy(previous_policy)


class TrainingSetup:
    """What `run_fn` and the Tuner's `tuner_fn` both need from `fn_args`: the transform
    output, the `EM3Config` (custom config + hyper-parameters + the transformed features),
    vocabularies, item catalog and schedule."""

    def __init__(self, fn_args, custom, hyperparameters=None):
        if CATALOG_KEY not in custom:
            raise ValueError(f"custom_config has no '{CATALOG_KEY}': use pipelines.components."
                             f"EM3Trainer / EM3Tuner, which hand the item catalog artifact to "
                             f"the user code.")
        self.fn_args, self.custom = fn_args, custom
        self.tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
        transformed = self.tft_output.transformed_feature_spec()
        self.context = tuple(n for n in CATEGORICAL if n in transformed
                             and n not in F.scalar_features())
        self.config = EM3Config.preset(custom.get("preset", "em3"), **{
            **(hyperparameters or {}), **custom.get("em3_overrides", {}),
            "context_features": list(self.context),
            "dense_features": [n for n in DENSE_FEATURES if n in transformed]})
        self.catalog = ItemCatalog.load(custom[CATALOG_KEY])
        self.vocabularies = transformed_vocabularies(self.tft_output,
                                                     F.scalar_features(self.context))
        self.seed = int(custom.get("seed", 0))
        self.epochs = int(custom.get("epochs", 1))
        self.patience = int(custom.get("patience", 1)) or None
        self.batch_size = int(custom.get("batch_size", 256))
        self.steps_per_epoch = max(1, fn_args.train_steps // self.epochs)

    def fit(self, config: EM3Config, strategy=None, log_dir=None, verbose=2):
        """Builds, compiles and fits `config` (early stopping on eval); `(model, History)`."""
        keras.utils.set_random_seed(self.seed)
        model = compile_ranker(config, self.vocabularies, self.catalog, strategy,
                               self.fn_args.train_steps)
        fn_args, tft_output = self.fn_args, self.tft_output
        train = _dataset(fn_args, fn_args.train_files, tft_output, self.batch_size, self.seed,
                         repeat=True)
        evaluation = _dataset(fn_args, fn_args.eval_files, tft_output, 1024, self.seed,
                              repeat=False)
        history = model.fit(train, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                            validation_data=evaluation,
                            validation_steps=fn_args.eval_steps or None,
                            callbacks=callbacks(self.patience, log_dir=log_dir),
                            verbose=verbose)
        return model, history


def _run(fn_args, custom):
    setup = TrainingSetup(fn_args, custom, hyperparameter_values(fn_args))
    strategy = choose_strategy(custom.get("distribute", "auto"))
    print(f"EM3 trainer: {strategy.num_replicas_in_sync} replica(s) "
          f"({type(strategy).__name__}), at most {setup.epochs} epoch(s) of "
          f"{setup.steps_per_epoch} steps, batch {setup.batch_size}, early stopping on eval "
          f"AUC (patience {setup.patience})", flush=True)
    model, _ = setup.fit(setup.config, strategy, log_dir=fn_args.model_run_dir)
    warmup = _warmup_examples(setup.vocabularies, setup.catalog, setup.context)
    export_saved_model(model, fn_args.serving_model_dir, transform_output=setup.tft_output,
                       warmup_examples=warmup, model_name=custom.get("model_name", "em3"))
    check_export(model, setup.tft_output, fn_args.serving_model_dir, warmup)


def check_export(model, tft_output, export_dir, serialized, tolerance=1e-5):
    """Fails the run unless the exported `serving_default` scores `serialized` exactly like
    the in-memory Keras model (raw parse + transform graph + model) does."""
    raw_spec = {n: s for n, s in tft_output.raw_feature_spec().items()
                if n in F.raw_features(model.config.context_features)}
    raw = tf.io.parse_example(tf.constant(serialized), raw_spec)
    expected = model(tft_output.transform_features_layer()(raw)).numpy()
    served = tf.saved_model.load(export_dir).signatures["serving_default"](
        examples=tf.constant(serialized))["scores"].numpy()
    difference = float(np.abs(expected - served).max())
    print(f"export check: max |in-memory - served| = {difference:.2e}", flush=True)
    if not difference <= tolerance:
        raise RuntimeError(f"The exported model's scores differ from the in-memory model's by "
                           f"{difference} > {tolerance}; the export is not trustworthy.")
