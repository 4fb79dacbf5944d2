"""Inputs of the EM3 Trainer executor for tests, made cheaply: TFX's own Transform executor
over small SYNTHETIC data (ImportExampleGen's layout and the SYNTHETIC schema), without a
pipeline; and `tests/trainer_worker.py` started on them."""

import glob
import json
import os
import shutil
import subprocess
import sys

from em3_tf._tf import tf
from em3_tf.data import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def artifact(cls, uri, splits=None):
    """A TFX artifact of type `cls` at `uri` (with `splits`), as the executors take them."""
    from tfx.types import artifact_utils
    artifact = cls()
    artifact.uri = uri
    if splits:
        artifact.split_names = artifact_utils.encode_split_names(list(splits))
    return artifact


def transform(base, data):
    """Writes `data` under `<base>/data` and runs TFX's Transform executor (the project's
    `preprocessing_fn`) over its train and eval splits into `<base>/root/Transform/...`;
    returns the URIs `{"examples" (transformed), "transform_graph", "schema",
    "item_catalog"}`."""
    from tfx.components.transform.executor import Executor
    from tfx.types import standard_artifacts

    data_dir = os.path.join(base, "data")
    records.write_dataset([data], data_dir)
    examples = os.path.join(base, "root", "ImportExampleGen", "examples", "1")
    for split in ("train", "eval"):
        os.makedirs(os.path.join(examples, f"Split-{split}"))
        shutil.copy(os.path.join(data_dir, data.protocol, split, records.FILE_NAME),
                    os.path.join(examples, f"Split-{split}", records.FILE_NAME))
    schema = os.path.join(base, "root", "ImportSchemaGen", "schema", "2")
    os.makedirs(schema)
    shutil.copy(os.path.join(REPO, "schemas", "synthetic.pbtxt"),
                os.path.join(schema, "schema.pbtxt"))
    graph = os.path.join(base, "root", "Transform", "transform_graph", "3")
    transformed = os.path.join(base, "root", "Transform", "transformed_examples", "3")
    Executor().Do(
        {"examples": [artifact(standard_artifacts.Examples, examples, ("train", "eval"))],
         "schema": [artifact(standard_artifacts.Schema, schema)]},
        {"transform_graph": [artifact(standard_artifacts.TransformGraph, graph)],
         "transformed_examples": [artifact(standard_artifacts.Examples, transformed)]},
        {"preprocessing_fn": "em3_tf.tfx.preprocessing.preprocessing_fn",
         "disable_statistics": 1})
    return {"examples": transformed, "transform_graph": graph, "schema": schema,
            "item_catalog": os.path.join(data_dir, "catalog")}


def split_in_two_files(split_dir):
    """Rewrites a split's records into two files, as a larger Transform run writes several
    (so that each of two workers can read its own file); returns the number of records."""
    [source] = glob.glob(os.path.join(split_dir, "*.gz"))
    rows = list(tf.data.TFRecordDataset(source, compression_type="GZIP").as_numpy_iterator())
    for part in range(2):
        with tf.io.TFRecordWriter(os.path.join(split_dir, f"part-{part}-of-2.gz"),
                                  options="GZIP") as writer:
            for record in rows[part::2]:
                writer.write(record)
    os.remove(source)
    return len(rows)


def start_trainer(spec, spec_path, log_path, **env):
    """Starts `tests/trainer_worker.py` on `spec` (input URIs, `model`, `model_run`,
    `custom_config`) with `env` added; returns `(process, open log file)`."""
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "trainer_worker.py"), str(spec_path)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="1",
                 CUDA_VISIBLE_DEVICES="", **env))
    return process, log
