"""Runs the EM3 Trainer executor in this process, as a pipeline's Trainer (or each replica of a
Vertex AI / Kubeflow training job, with the `TF_CONFIG` it was given) does; for
`tests/test_multi_worker.py` and `tests/test_resume.py`.

    python tests/trainer_worker.py SPEC.json

SPEC.json: the URIs of the input artifacts (`examples`: transformed examples, `transform_graph`,
`schema`, `item_catalog`), of the outputs (`model`, `model_run`) and the `custom_config`. The
executor builds `fn_args` as TFX does and calls `em3_tf.tfx.trainer.run_fn` (train steps
counted at run time: `TrainArgs(num_steps=0)`).
"""

import json
import os
import sys

from trainer_inputs import artifact  # this script's directory is on sys.path


def main(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    from tfx.proto import trainer_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import json_utils, proto_utils

    from pipelines.components import EM3ItemCatalog, EM3TrainerExecutor

    inputs = {
        "examples": [artifact(standard_artifacts.Examples, spec["examples"],
                               ("train", "eval"))],
        "transform_graph": [artifact(standard_artifacts.TransformGraph,
                                      spec["transform_graph"])],
        "schema": [artifact(standard_artifacts.Schema, spec["schema"])],
        "item_catalog": [artifact(EM3ItemCatalog, spec["item_catalog"])],
    }
    outputs = {"model": [artifact(standard_artifacts.Model, spec["model"])],
               "model_run": [artifact(standard_artifacts.ModelRun, spec["model_run"])]}
    properties = {
        "run_fn": "em3_tf.tfx.trainer.run_fn",
        "train_args": proto_utils.proto_to_json(trainer_pb2.TrainArgs(num_steps=0)),
        "eval_args": proto_utils.proto_to_json(trainer_pb2.EvalArgs(num_steps=0)),
        "custom_config": json_utils.dumps(spec["custom_config"]),
    }
    EM3TrainerExecutor().Do(inputs, outputs, properties)
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task")
    print(f"trainer {task or ''} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
