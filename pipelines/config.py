"""Every setting of the EM3 TFX pipeline, in one place."""

import dataclasses
import json
import math
import os
from typing import Any, Dict, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve(path: str) -> str:
    """An absolute local path, or a URI (gs://, s3://, ...) as it is."""
    return path if "://" in path else os.path.abspath(path)


@dataclasses.dataclass
class PipelineConfig:
    """Settings of one pipeline (paths are relative to the working directory).

    Attributes:
      pipeline_name: name in ML Metadata; also names the artifact and metadata folders.
      data_dir: a directory written by `python -m em3_tf.data.build`.
      protocol: which split protocol's examples to train and evaluate on. `item_cold` (the
        default) holds 20% of the catalog out of training, so the cold-item slice of the
        evaluation has thousands of examples instead of dozens.
      schema_file: the TFMD schema ImportSchemaGen reads.
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
      auc_floor: a model with eval AUC below this is never blessed.
      regression_tolerance: a model is blessed only if its AUC is at least the latest blessed
        model's minus this (the first run has no baseline: the floor alone decides).
      beam_args: Beam pipeline arguments (e.g. `--runner=FlinkRunner`, `--direct_num_workers`).
      enable_cache: reuse component outputs whose inputs did not change.
    """

    pipeline_name: str = "em3-ml100k"
    data_dir: str = "artifacts/ml-100k"
    protocol: str = "item_cold"
    schema_file: str = os.path.join(REPO, "schemas", "schema.pbtxt")
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
    auc_floor: float = 0.65
    regression_tolerance: float = 0.001
    beam_args: Tuple[str, ...] = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
    enable_cache: bool = True
    tune: bool = False
    max_trials: int = 6
    hyperparameters_dir: str = os.path.join(REPO, "pipelines", "hyperparameters")

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
        import tensorflow as tf
        with tf.io.gfile.GFile(os.path.join(self.data_dir, "summary.json")) as f:
            return json.load(f)

    def train_examples(self) -> int:
        return int(self.data_summary()["protocols"][self.protocol]["train"]["examples"])

    def train_steps(self) -> int:
        return self.epochs * math.ceil(self.train_examples() / self.batch_size)

    def recorded_hyperparameters(self):
        """The directory holding the recorded `best_hyperparameters.txt` of this data set and
        preset, or None."""
        path = os.path.join(self.hyperparameters_dir, self.data_summary()["data"], self.preset)
        return path if os.path.exists(os.path.join(path, "best_hyperparameters.txt")) else None

    def em3_config(self):
        from em3_tf.config import EM3Config
        return EM3Config.preset(self.preset, **self.em3_overrides)
