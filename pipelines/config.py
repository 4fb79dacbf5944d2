"""Every setting of the EM3 TFX pipeline, in one place."""

import dataclasses
import json
import os
import re
from typing import Any, Dict, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOWN_SCHEMAS = {"ml-100k": "schema.pbtxt", "synthetic": "synthetic.pbtxt"}


def resolve(path: str) -> str:
    """An absolute local path, or a URI (gs://, s3://, ...) as it is."""
    return path if "://" in path else os.path.abspath(path)


def read_summary(data_dir: str) -> Dict[str, Any]:
    """The `summary.json` of a data directory written by `python -m em3_tf.data.build`."""
    import tensorflow as tf
    with tf.io.gfile.GFile(os.path.join(data_dir, "summary.json")) as f:
        return json.load(f)


@dataclasses.dataclass
class PipelineConfig:
    """Settings of one pipeline (paths are relative to the working directory).

    `for_data` gives the defaults that keep data sets apart: the pipeline name (and so its
    ML Metadata database, pipeline root and the baseline the Evaluator compares with) and the
    served model's name (and so the push directory) are derived from the data set.

    Attributes:
      pipeline_name: name in ML Metadata; also names the artifact and metadata folders.
      data_dir: a directory written by `python -m em3_tf.data.build`.
      protocol: which split protocol's examples to train and evaluate on. `item_cold` (the
        default) holds 20% of the catalog out of training, so the cold-item slice of the
        evaluation has thousands of examples instead of dozens.
      schema_file: the TFMD schema ImportSchemaGen reads; empty: the data set's own
        (`<data_dir>/schema.pbtxt`, written by its build, or the known schema of
        MovieLens-100K / SYNTHETIC data written without one).
      work_dir: pipeline root (artifacts) and SQLite ML Metadata live under it.
      serving_dir: Pusher base directory; models land in `<serving_dir>/<model_name>/<version>`.
      model_name: the served model's name.
      preset, em3_overrides: the `EM3Config` trained (`em3_tf.config`): the preset's, with
        `em3_overrides` applied last.
      epochs, patience, batch_size, seed: training schedule: at most `epochs` epochs, early
        stopping on the eval split's AUC after `patience` epochs without gain (0: never), the
        best epoch's weights kept.
      tune: run TFX's Tuner (KerasTuner random search, `max_trials` trials over
        `em3_tf.tuning.SEARCH_SPACE`) and train with its best hyper-parameters. Without it,
        the Trainer imports the recorded best hyper-parameters of the data set and preset
        (`hyperparameters_dir/<data name>/<preset>/best_hyperparameters.txt`, written by
        `benchmarks/bench_quality.py --tune`), when there are any. Precedence: preset <
        tuned or recorded hyper-parameters < `em3_overrides`.
      distribute: "auto" | "mirrored" | "default" (see `em3_tf.tfx.trainer.choose_strategy`).
      mixed_precision: Keras `mixed_float16` policy in the Trainer (for GPUs).
      auc_floor: a model with eval AUC below this is never blessed. None (the default): the
        eval AUC of the popularity baseline (each item scored by its smoothed training click
        rate; recorded by the data build), so the floor means the same on any data set.
      regression_tolerance: a model is blessed only if its AUC is at least the latest blessed
        model's minus this (the first run has no baseline: the floor alone decides).
      beam_args: Beam pipeline arguments (e.g. `--runner=FlinkRunner`, `--direct_num_workers`).
      enable_cache: reuse component outputs whose inputs did not change. TFX's cache key
        includes the fingerprint of the user code each component runs and of the item
        catalog's files (`pipelines/fingerprint.py`), so an edit re-runs what it affects.
      hyperparameters_uri: a directory with `best_hyperparameters.txt` to import (e.g. a
        gs:// copy of a recorded one, for Kubeflow); overrides `hyperparameters_dir`.
      catalog_hash: the catalog's fingerprint; empty: computed from `<data_dir>/catalog`
        (a compiler without access to remote data passes it).
    """

    pipeline_name: str = "em3-ml100k"
    data_dir: str = "artifacts/ml-100k"
    protocol: str = "item_cold"
    schema_file: str = ""
    work_dir: str = "artifacts/tfx"
    serving_dir: str = "artifacts/serving"
    model_name: str = "em3"
    preset: str = "em3"
    em3_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 4
    patience: int = 1
    batch_size: int = 256
    seed: int = 0
    distribute: str = "auto"
    mixed_precision: bool = False
    auc_floor: Optional[float] = None
    regression_tolerance: float = 0.001
    beam_args: Tuple[str, ...] = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
    enable_cache: bool = True
    tune: bool = False
    max_trials: int = 6
    hyperparameters_dir: str = os.path.join(REPO, "pipelines", "hyperparameters")
    catalog_hash: str = ""
    hyperparameters_uri: str = ""

    @classmethod
    def for_data(cls, data_dir: str, **settings) -> "PipelineConfig":
        """The configuration of `data_dir` with its data set's default names (from the
        directory's name: `artifacts/shop` -> pipeline and model `em3-shop`; MovieLens-100K's
        `ml-100k` -> pipeline `em3-ml100k`, model `em3`), `settings` (None values ignored)
        applied last. Reads nothing, so it works for remote data too."""
        slug = re.sub(r"[^a-z0-9]+", "-", os.path.basename(data_dir.rstrip("/")).lower())
        slug = {"ml-100k": "ml100k"}.get(slug.strip("-"), slug.strip("-")) or "data"
        defaults = dict(pipeline_name=f"em3-{slug}",
                        model_name="em3" if slug == "ml100k" else f"em3-{slug}")
        return cls(data_dir=data_dir, **{**defaults, **{k: v for k, v in settings.items()
                                                       if v is not None}})

    def schema_path(self) -> str:
        """The schema the pipeline validates against (see `schema_file`)."""
        if self.schema_file:
            return resolve(self.schema_file)
        own = os.path.join(self.data_dir, "schema.pbtxt")
        if "://" in self.data_dir or os.path.exists(own):  # remote: resolved at run time
            return resolve(own)
        known = KNOWN_SCHEMAS.get(self.data_summary()["data"])
        if known is None:
            raise FileNotFoundError(f"{self.data_dir} has no schema.pbtxt: rebuild it with "
                                    f"`python -m em3_tf.data.build` or pass --schema FILE.")
        return os.path.join(REPO, "schemas", known)

    def catalog_fingerprint(self) -> str:
        """`catalog_hash`, or the hash of `<data_dir>/catalog`'s files."""
        from pipelines.fingerprint import files_fingerprint
        return self.catalog_hash or files_fingerprint(os.path.join(self.data_dir, "catalog"))

    def value_floor(self) -> float:
        """The eval AUC a model needs to be blessed (see `auc_floor`)."""
        if self.auc_floor is not None:
            return float(self.auc_floor)
        protocol = self.data_summary()["protocols"][self.protocol]
        if "popularity_eval_auc" not in protocol:
            raise ValueError(f"{self.data_dir} records no popularity baseline (built before "
                             f"it was): rebuild it, or pass --auc-floor.")
        return float(protocol["popularity_eval_auc"])

    @property
    def pipeline_root(self) -> str:
        return os.path.abspath(os.path.join(self.work_dir, self.pipeline_name, "root"))

    @property
    def metadata_path(self) -> str:
        return os.path.abspath(os.path.join(self.work_dir, self.pipeline_name, "metadata.db"))

    @property
    def push_base(self) -> str:
        return resolve(os.path.join(self.serving_dir, self.model_name))

    def data_summary(self) -> Dict[str, Any]:
        return read_summary(self.data_dir)

    def recorded_hyperparameters(self):
        """The directory holding the recorded `best_hyperparameters.txt` of this data set and
        preset (`hyperparameters_uri`, else the local record), or None."""
        if self.hyperparameters_uri:
            return self.hyperparameters_uri
        if not self.hyperparameters_dir:
            return None
        path = os.path.join(self.hyperparameters_dir, self.data_summary()["data"], self.preset)
        return path if os.path.exists(os.path.join(path, "best_hyperparameters.txt")) else None

    def em3_config(self):
        from em3_tf.config import EM3Config
        return EM3Config.preset(self.preset, **self.em3_overrides)
