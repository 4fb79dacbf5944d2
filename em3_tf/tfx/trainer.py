"""TFX Trainer user code: `run_fn` trains EM3 on transformed examples and exports it.

`fn_args.custom_config` keys (set by `pipelines/pipeline.py` from `PipelineConfig`):
  - `preset` (an `EM3Config` preset) and `em3_overrides` (fields set by the user): the model
    is the preset, then the Tuner's (or imported) best hyper-parameters, then the overrides;
  - `epochs` (the most epochs), `patience` (early stopping on the eval split's AUC, best
    weights restored; 0 trains every epoch), `batch_size`, `seed`;
  - `distribute`: `"auto"` (MultiWorkerMirroredStrategy when `TF_CONFIG` names several
    workers, else MirroredStrategy over the GPUs if any, else the default strategy),
    `"multi_worker"`, `"mirrored"` (MirroredStrategy over GPUs, or over the logical CPUs when
    there is no GPU), `"default"`;
  - `mixed_precision`: use the `mixed_float16` Keras policy (GPUs);
  - `model_name`: the name served models carry (for warm-up requests);
  - `backup_dir`: where the resumable training backup goes (see "Resuming" below); `resume`:
    False turns backups off;
  - `item_catalog_uri`: added by `pipelines.components.EM3Trainer` from its `item_catalog`.

Steps: `fn_args.train_steps` (the Trainer's `TrainArgs.num_steps`) is the number of training
steps of all epochs; when it is None or 0, the training split of the transformed examples is
counted when the Trainer (or Tuner) runs, and an epoch is `ceil(examples / batch_size)` steps.

Resuming: a Keras `BackupAndRestore` backup (model, optimizer and its step count, epoch, early
stopping state and best weights) is written at the end of every epoch to
`<backup base>/<key>`, where `<key>` is a hash of everything that defines this training (the
input artifacts' URIs, train/eval steps, hyper-parameters and custom config but
`distribute`), so only a re-run of the same training resumes from it. TFX gives every
Trainer execution a new `model_run` directory (`<pipeline root>/EM3Trainer/model_run/<id>`),
so the backup base is the component's directory above it by default,
`<pipeline root>/EM3Trainer/backup/`: a pipeline re-run after a killed Trainer reuses the
cached upstream artifacts, gets the same key and continues after the last finished epoch. On
Vertex AI / Kubeflow, where artifact directories are per pipeline job, set `backup_dir` to
a stable location (e.g. `gs://bucket/em3/backup`) for a re-submitted job to resume. The
backup is removed once the model is exported.

Multi-worker: when `TF_CONFIG` names several workers (`chief` / `worker` tasks, as Vertex AI
and Kubeflow's TFJob set it for each replica), `run_fn` trains under
`MultiWorkerMirroredStrategy`: each worker reads its shard of the data (whole files when
there are at least as many files as workers, else every n-th batch), the global batch is
`batch_size` and the ranker divides its loss by it, only the chief writes the backup,
TensorBoard logs and the export (the other workers write theirs to temporary directories,
removed, as the collective save needs every worker), and the other workers then wait for the
chief's export to appear (`chief_export_wait_s`, 600 s by default) so that each worker's
Trainer executor finds the model. The strategy must be created before TensorFlow runs any op
in the process: run one Trainer process per worker.
"""

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from typing import Optional

import numpy as np
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from em3_tf import features as F
from em3_tf._tf import keras, tf
from em3_tf.catalog import ItemCatalog
from em3_tf.config import EM3Config
from em3_tf.export import export_saved_model
from em3_tf.tfx.preprocessing import DENSE_FEATURES, context_features, vocabulary_name
from em3_tf.training import callbacks, compile_ranker, fit_with, remove_backup

CATALOG_KEY = "item_catalog_uri"


def cluster_workers() -> int:
    """How many training workers (`chief` and `worker` tasks) `TF_CONFIG` names (0: none)."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster") or {}
    if cluster.get("ps"):
        raise ValueError("TF_CONFIG names parameter servers: run_fn trains with "
                         "MultiWorkerMirroredStrategy (chief and worker tasks only).")
    return sum(len(cluster.get(task, [])) for task in ("chief", "worker"))


def choose_strategy(kind="auto") -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for the cluster and devices present (see the module
    docstring). Call it before TensorFlow runs any op: MultiWorkerMirroredStrategy must
    configure the runtime first."""
    workers = cluster_workers()
    if kind == "multi_worker" or (kind == "auto" and workers > 1):
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            raise RuntimeError(f"MultiWorkerMirroredStrategy could not start ({e}): it must be "
                               f"created before TensorFlow runs anything in this process; run "
                               f"each worker's Trainer in a process of its own.") from e
    if workers > 1:
        raise ValueError(f"TF_CONFIG names {workers} workers but distribute={kind!r}: each "
                         f"would train alone and export over the others'; use 'auto' or "
                         f"'multi_worker'.")
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "auto":
        return tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
    if kind == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if kind == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"`distribute` must be 'auto', 'multi_worker', 'mirrored' or 'default', "
                     f"got {kind!r}.")


def num_workers(strategy) -> int:
    """The number of workers `strategy` trains on (1 but for MultiWorkerMirroredStrategy)."""
    resolver = strategy.cluster_resolver
    if resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, sum(len(cluster.get(task, [])) for task in ("chief", "worker")))


def is_chief(strategy) -> bool:
    """Whether this worker writes checkpoints and the export (always, on one worker)."""
    return bool(strategy.extended.should_checkpoint)


def _files(patterns):
    return sorted({f for pattern in patterns for f in tf.io.gfile.glob(pattern)})


def count_examples(file_patterns) -> int:
    """The number of records in the (GZIP when named `*.gz`) TFRecord files matching
    `file_patterns`: the transformed examples' training split."""
    files = _files(file_patterns)
    if not files:
        raise ValueError(f"No files match {list(file_patterns)}.")
    total = 0
    for compression in ("GZIP", ""):
        group = [f for f in files if f.endswith(".gz") == (compression == "GZIP")]
        if group:
            records = tf.data.TFRecordDataset(group, compression_type=compression,
                                              num_parallel_reads=tf.data.AUTOTUNE)
            total += int(records.reduce(np.int64(0), lambda n, _: n + 1))
    return total


def training_key(fn_args, custom) -> str:
    """A hash of what defines this training (input URIs, steps, hyper-parameters, custom
    config but the distribution and backup settings): names its backup."""
    identity = {
        "transform_graph": fn_args.transform_graph_path,
        "train_files": list(fn_args.train_files or []),
        "eval_files": list(fn_args.eval_files or []),
        "train_steps": fn_args.train_steps, "eval_steps": fn_args.eval_steps,
        "hyperparameters": getattr(fn_args, "hyperparameters", None),
        "custom_config": {k: v for k, v in custom.items()
                          if k not in ("distribute", "backup_dir", "resume",
                                       "chief_export_wait_s")}}
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def backup_dir(fn_args, custom):
    """Where this training's backup goes (see "Resuming" in the module docstring), or None
    when `custom_config["resume"]` is False."""
    if custom.get("resume", True) is False:
        return None
    base = custom.get("backup_dir")
    if not base:
        if not fn_args.model_run_dir:
            return None
        component_dir = os.path.dirname(os.path.dirname(fn_args.model_run_dir.rstrip("/")))
        base = os.path.join(component_dir, "backup")
    return os.path.join(base, training_key(fn_args, custom))


def first_stage_backup(backup: Optional[str]) -> Optional[str]:
    """The backup of a two-stage training's first stage, beside the training's own, so that a
    run killed in its second stage does not train the first again (the second stage's backup
    holds the codes it trained with)."""
    return backup.rstrip("/") + "-first-stage" if backup else None


def transformed_vocabularies(tft_output, names):
    """`{feature: sorted ids}` (int64, or str for string ids) from the Transform's
    `tft.vocabulary` files."""
    spec = tft_output.transformed_feature_spec()
    out = {}
    for n in names:
        values = [v.decode() if isinstance(v, bytes) else str(v)
                  for v in tft_output.vocabulary_by_name(vocabulary_name(n))]
        out[n] = np.array(sorted(values) if spec[n].dtype == tf.string
                          else sorted(int(v) for v in values),
                          str if spec[n].dtype == tf.string else np.int64)
    return out


def _dataset(fn_args, files, tft_output, batch_size, seed, repeat, workers=1):
    """Batches of `batch_size` (the global batch) of the transformed examples in `files`.

    With several workers, tf.distribute gives each worker its shard: whole files when there
    are at least as many files as workers, else every `workers`-th batch (each worker reads
    the files in the same seeded order)."""
    dataset = fn_args.data_accessor.tf_dataset_factory(
        files, tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle=repeat,
                                              shuffle_seed=seed, num_epochs=None if repeat else 1),
        tft_output.transformed_metadata.schema)
    if workers > 1:
        policy = tf.data.experimental.AutoShardPolicy
        count = len(_files(files))
        by_file = count >= workers
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = policy.FILE if by_file else policy.DATA
        dataset = dataset.with_options(options)
        print(f"sharding: {count} file(s) for {workers} workers, "
              + ("each reads its own files" if by_file
                 else f"each takes every {_ordinal(workers)} batch"), flush=True)
    return dataset


def _ordinal(n):
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


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
    # first: MultiWorkerMirroredStrategy must start before TensorFlow runs any op
    strategy = choose_strategy(custom.get("distribute", "auto"))
    previous_policy = keras.mixed_precision.global_policy()
    if custom.get("mixed_precision"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        _run(fn_args, custom, strategy)
    finally:  # LocalDagRunner runs every component in this one process
        keras.mixed_precision.set_global_policy(previous_policy)


class TrainingSetup:
    """What `run_fn` and the Tuner's `tuner_fn` both need from `fn_args`: the transform
    output, the `EM3Config` (custom config + hyper-parameters + the transformed features),
    vocabularies, item catalog and schedule (`steps_per_epoch`: from `fn_args.train_steps`,
    else counted, see the module docstring)."""

    def __init__(self, fn_args, custom, hyperparameters=None, workers=1):
        if CATALOG_KEY not in custom:
            raise ValueError(f"custom_config has no '{CATALOG_KEY}': use pipelines.components."
                             f"EM3Trainer / EM3Tuner, which hand the item catalog artifact to "
                             f"the user code.")
        self.fn_args, self.custom, self.workers = fn_args, custom, workers
        self.tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
        transformed = self.tft_output.transformed_feature_spec()
        self.context = context_features(transformed)
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
        self.train_examples = None
        if fn_args.train_steps:  # fixed in TrainArgs when the pipeline was built
            self.steps_per_epoch = max(1, int(fn_args.train_steps) // self.epochs)
        else:
            self.train_examples = count_examples(fn_args.train_files)
            self.steps_per_epoch = max(1, math.ceil(self.train_examples / self.batch_size))
        self.total_steps = self.steps_per_epoch * self.epochs  # for the learning-rate schedule

    def interactions(self, config: EM3Config):
        """The training split's `{item_id, label, history_item_ids, history_labels}` (raw
        ids, sequences padded), read once for co-engagement-aligned semantic ids; else None."""
        if not (config.semantic_id_levels and config.semantic_id_source == "aligned"):
            return None
        names = (F.ITEM_ID, F.LABEL, F.HISTORY, F.HISTORY_LABELS)
        columns = {name: [] for name in names}
        for batch in _dataset(self.fn_args, self.fn_args.train_files, self.tft_output, 4096,
                              self.seed, repeat=False):
            for name in names:
                value = batch[name]
                if isinstance(value, tf.SparseTensor):
                    value = tf.RaggedTensor.from_sparse(value)
                if isinstance(value, tf.RaggedTensor):
                    pad = F.PAD_STRING.encode() if value.dtype == tf.string else F.PAD_ID
                    value = value.to_tensor(pad, shape=[None, config.max_history_len])
                value = value.numpy()
                if value.dtype == object:  # string ids: UTF-8 bytes
                    value = np.char.decode(value.astype(np.bytes_), "utf-8")
                columns[name].append(value.reshape(len(value), -1) if name in F.SEQUENCES
                                     else value.reshape(-1))
        return {name: np.concatenate(parts) for name, parts in columns.items()}

    def describe_steps(self) -> str:
        source = (f"{self.train_examples} training examples counted" if self.train_examples
                  is not None else f"train_steps {self.fn_args.train_steps}")
        return f"{self.epochs} epoch(s) of {self.steps_per_epoch} steps ({source})"

    def fit(self, config: EM3Config, strategy=None, log_dir=None, verbose=None, backup_dir=None):
        """Builds, compiles and fits `config` (early stopping on eval; resuming from
        `backup_dir` if it holds a backup); `(model, History)`. `verbose` defaults to a
        progress bar on one replica, and to one line per epoch on several (a step's metrics
        there are per-replica values; `GlobalMetrics` all-reduces only the epoch's)."""
        if verbose is None:
            replicas = strategy.num_replicas_in_sync if strategy is not None else 1
            verbose = 1 if replicas == 1 else 2
        first = None
        if config.two_stage:  # semantic ids of the model's own trained content embeddings
            print("EM3 trainer: stage 1 of 2, the model without semantic ids (its trained "
                  "content embeddings give the codes)", flush=True)
            first, _ = self.fit(config.first_stage(), strategy, verbose=verbose,
                                backup_dir=first_stage_backup(backup_dir))
            print("EM3 trainer: stage 2 of 2, the model with the codes", flush=True)
        keras.utils.set_random_seed(self.seed)
        model = compile_ranker(config, self.vocabularies, self.catalog, strategy,
                               self.total_steps, self.interactions(config), first)
        del first  # its codes are in the model now
        fn_args, tft_output = self.fn_args, self.tft_output
        train = _dataset(fn_args, fn_args.train_files, tft_output, self.batch_size, self.seed,
                         repeat=True, workers=self.workers)
        evaluation = _dataset(fn_args, fn_args.eval_files, tft_output, 1024, self.seed,
                              repeat=False, workers=self.workers)
        history = fit_with(model, train, callbacks(self.patience, log_dir=log_dir,
                                                   backup_dir=backup_dir),
                           epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                           validation_data=evaluation,
                           validation_steps=fn_args.eval_steps or None, verbose=verbose)
        return model, history


def _run(fn_args, custom, strategy):
    workers = num_workers(strategy)
    chief = is_chief(strategy)
    setup = TrainingSetup(fn_args, custom, hyperparameter_values(fn_args), workers)
    backup = backup_dir(fn_args, custom)
    kind = ("MultiWorkerMirroredStrategy"
            if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else type(strategy).__name__)
    print(f"EM3 trainer: {strategy.num_replicas_in_sync} replica(s) ({kind}"
          + (f", {workers} workers, {'chief' if chief else 'not the chief'}" if workers > 1
             else "")
          + f"), at most {setup.describe_steps()}, global batch {setup.batch_size}, early "
          f"stopping on eval AUC (patience {setup.patience}), backup {backup or 'off'}",
          flush=True)
    model, _ = setup.fit(setup.config, strategy, log_dir=fn_args.model_run_dir,
                         backup_dir=backup)
    warmup = _warmup_examples(setup.vocabularies, setup.catalog, setup.context)
    # Every worker saves (the collective save reads every worker's variables); only the
    # chief's export is kept.
    export_dir = (fn_args.serving_model_dir if chief
                  else os.path.join(tempfile.mkdtemp(prefix="em3-worker-export-"), "model"))
    try:
        export_saved_model(model, export_dir, transform_output=setup.tft_output,
                           warmup_examples=warmup, model_name=custom.get("model_name", "em3"))
        check_export(model, setup.tft_output, export_dir, warmup)
    finally:
        if not chief:
            shutil.rmtree(os.path.dirname(export_dir), ignore_errors=True)
    if chief:
        remove_backup(backup)
        remove_backup(first_stage_backup(backup))
    else:
        _wait_for_chief_export(fn_args.serving_model_dir,
                               float(custom.get("chief_export_wait_s", 600)))


def _wait_for_chief_export(export_dir, seconds):
    """Waits until the chief's export is in place (the Trainer executor of every worker
    checks that the model exists), at most `seconds`."""
    deadline = time.monotonic() + seconds
    marker = os.path.join(export_dir, "saved_model.pb")
    while not tf.io.gfile.exists(marker):
        if time.monotonic() > deadline:
            print(f"EM3 trainer: the chief's export {export_dir} did not appear within "
                  f"{seconds:.0f} s", flush=True)
            return
        time.sleep(1)
    print(f"EM3 trainer: the chief exported {export_dir}", flush=True)


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
