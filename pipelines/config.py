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
      preset, em3_overrides: the `EM3Config` trained (`em3_tf.config`).
      epochs, batch_size, seed: training schedule.
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
    epochs: int = 2
    batch_size: int = 256
    seed: int = 0
    distribute: str = "auto"
    mixed_precision: bool = False
    auc_floor: float = 0.65
    regression_tolerance: float = 0.001
    beam_args: Tuple[str, ...] = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
    enable_cache: bool = True

    @property
    def pipeline_root(self) -> str:
        return os.path.abspath(os.path.join(self.work_dir, self.pipeline_name, "root"))

    @property
    def metadata_path(self) -> str:
        return os.path.abspath(os.path.join(self.work_dir, self.pipeline_name, "metadata.db"))

    @property
    def push_base(self) -> str:
        return resolve(os.path.join(self.serving_dir, self.model_name))

    def train_examples(self) -> int:
        import tensorflow as tf
        with tf.io.gfile.GFile(os.path.join(self.data_dir, "summary.json")) as f:
            summary = json.load(f)
        return int(summary["protocols"][self.protocol]["train"]["examples"])

    def train_steps(self) -> int:
        return self.epochs * math.ceil(self.train_examples() / self.batch_size)

    def em3_config(self):
        from em3_tf.config import EM3Config
        return EM3Config.preset(self.preset, **self.em3_overrides)
