"""The TFX pipeline end to end on small SYNTHETIC data (LocalDagRunner, in a temp dir)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from em3_tf import features as F
from em3_tf._tf import tf
from conftest import FLOOR, keras_scorer, pipeline_args, pipeline_summary
from em3_tf.data import records
from pipelines import local_runner

def test_first_run_is_blessed_and_pushed(pushed_pipeline):
    summary, config = pushed_pipeline
    assert summary["blessed"] and summary["pushed"]
    assert len(summary["serving_versions"]) == 1
    version_dir = os.path.join(config.push_base, summary["serving_versions"][0])
    for name in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests"):
        assert os.path.exists(os.path.join(version_dir, name)), name
    evaluation = summary["evaluation"]
    assert evaluation["overall"]["auc"] >= float(FLOOR)
    assert evaluation["cold_items"]["example_count"] > 300  # eval window: every cold row in it
    assert evaluation["cold_items"]["auc"] > 0.55


def test_pushed_model_scores_equal_the_keras_model(pushed_pipeline):
    """Served scores = the Keras model rebuilt from the pushed weights, fed the raw examples
    through the pipeline's transform graph (tolerance 1e-5)."""
    summary, config = pushed_pipeline
    score = keras_scorer(summary, config)
    test = records.read_split(config.data_dir, config.protocol, "test")
    rows = {k: test[k][:64] for k in F.raw_features()}
    expected = score(rows)
    version_dir = os.path.join(config.push_base, summary["serving_versions"][0])
    served = tf.saved_model.load(version_dir).signatures["serving_default"](
        examples=tf.constant(F.to_examples(rows)))["scores"].numpy()
    assert np.abs(expected - 0.5).max() > 1e-3  # a trained model, not a constant
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_a_worse_model_is_not_blessed_and_the_pushed_version_stays(pushed_pipeline, workspace):
    before = pushed_pipeline[0]["serving_versions"]
    worse = pipeline_args(workspace)
    worse[worse.index("--em3-config") + 1] = json.dumps(
        {"max_history_len": 20, "learning_rate": 1e-12})  # the model stays untrained
    assert local_runner.main(worse) == local_runner.NOT_BLESSED
    summary, _ = pipeline_summary(workspace)
    assert summary["blessed"] is False and summary["pushed"] is False
    assert any("change vs the latest blessed model" in line or "below the floor" in line
               for line in summary["failed_thresholds"]), summary["failed_thresholds"]
    assert summary["serving_versions"] == before


def test_schema_anomaly_stops_the_run_before_training(workspace):
    from pipelines.components import DataAnomalyError

    bad = str(workspace["base"] / "bad-data")
    shutil.copytree(workspace["data"], bad)
    path = os.path.join(bad, "item_cold", "eval", records.FILE_NAME)
    rows = records.read_split(bad, "item_cold", "eval")
    rows.pop("history_length")  # a feature the schema requires goes missing
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for record in F.to_examples(rows):
            writer.write(record)
    args = pipeline_args(workspace) + ["--pipeline-name", "em3-bad-data"]
    args[args.index("--data") + 1] = bad
    args[args.index("--serving-dir") + 1] = str(workspace["base"] / "bad-serving")
    with pytest.raises(Exception) as error:
        local_runner.main(args)
    chain, e = [], error.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    message = "\n".join(str(x) for x in chain)
    assert any(isinstance(x, DataAnomalyError) for x in chain) or "history_length" in message
    root = os.path.join(workspace["work"], "em3-bad-data", "root")
    assert not os.path.exists(os.path.join(root, "EM3Trainer"))
    assert not os.path.exists(str(workspace["base"] / "bad-serving"))


def test_mirrored_strategy_on_two_logical_cpus(pushed_pipeline, workspace):
    """A few training steps under MirroredStrategy through the same run_fn (subprocess, as
    logical devices must be set before TensorFlow starts)."""
    args = pipeline_args(workspace) + ["--distribute", "mirrored", "--logical-cpus", "2",
                                       "--serving-dir",
                                       str(workspace["base"] / "mirrored-serving")]
    args[args.index("--epochs") + 1] = "1"
    out = subprocess.run([sys.executable, "-m", "pipelines.local_runner", *args],
                         capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    # one epoch may not be blessed against the session's model (exit NOT_BLESSED); it trains
    assert out.returncode in (0, local_runner.NOT_BLESSED), log[-3000:]
    assert "2 replica(s) (MirroredStrategy)" in log
    assert "export check: max |in-memory - served|" in log


def test_kubeflow_v2_spec_compiles_for_gcs_with_no_local_path(workspace, tmp_path):
    """The spec compiles with gs:// roots without any access to them (the floor and the
    catalog hash given), and carries no absolute path of this machine."""
    import re

    from pipelines import kubeflow_runner

    output = str(tmp_path / "em3.json")
    kubeflow_runner.main(["--data-dir", "gs://example-bucket/shop", "--output", output,
                          "--pipeline-root", "gs://example-bucket/em3",
                          "--serving-dir", "gs://example-bucket/serving",
                          "--auc-floor", "0.6", "--catalog-hash", "0123456789abcdef",
                          "--image", "example.registry/em3-tf:0.1.0"])
    with open(output) as f:
        text = f.read()
    spec = json.loads(text)
    assert {"displayName", "pipelineSpec", "runtimeConfig"} <= set(spec)
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    for name in ("ImportExampleGen", "Transform", "EM3Trainer", "Evaluator", "Pusher",
                 "ItemCatalogGen", "AnomaliesGate"):
        assert name in tasks, sorted(tasks)
    executors = json.dumps(spec["pipelineSpec"]["deploymentSpec"])
    assert "example.registry/em3-tf:0.1.0" in executors
    for local in {os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.getcwd(),
                  str(tmp_path), os.path.expanduser("~"), "/tmp/", "/work/"}:
        assert local not in text, local
    uris = set(re.findall(r'"((?:gs://|/)[^"\\]*)"', text))
    assert not [u for u in uris if u.startswith("/")], uris
    assert "gs://example-bucket/shop/schema.pbtxt" in text
    assert "gs://example-bucket/shop/catalog" in text
    assert "gs://example-bucket/serving/em3-shop" in text


def test_tuner_feeds_its_best_hyperparameters_to_the_trainer(pushed_pipeline, workspace):
    """--tune: TFX's Tuner (KerasTuner random search, 2 trials) over the cached Transform
    output; the Trainer trains with its best values, the user's overrides still winning."""
    from em3_tf.export import load_config
    from em3_tf.tuning import SEARCH_SPACE, read_hyperparameters

    args = pipeline_args(workspace, "--tune", "--max-trials", "2")
    args[args.index("--epochs") + 1] = "1"
    args[args.index("--serving-dir") + 1] = str(workspace["base"] / "tuned-serving")
    local_runner.main(args)
    config = local_runner.config_from_args(local_runner.parse_args(args))
    summary = local_runner.summarize(config)
    best = read_hyperparameters(summary["artifacts"]["EM3Tuner/best_hyperparameters"])
    assert set(best) == set(SEARCH_SPACE)
    trained = load_config(os.path.join(summary["artifacts"]["EM3Trainer/model"],
                                       "Format-Serving"))
    for name in ("dropout", "id_dropout", "cic_weight", "content_lr_scale", "modality_dropout"):
        assert getattr(trained, name) == best[name], name
    assert trained.learning_rate == 0.003  # --em3-config overrides the tuned value


def test_recorded_hyperparameters_are_imported_for_their_data_and_preset(workspace, tmp_path):
    import keras_tuner

    from em3_tf.tuning import write_hyperparameters
    from pipelines.pipeline import create_pipeline

    config = local_runner.config_from_args(local_runner.parse_args(pipeline_args(workspace)))
    ids = {c.id for c in create_pipeline(config).components}
    assert "recorded_hyperparameters" not in ids and "EM3Tuner" not in ids
    hp = keras_tuner.HyperParameters()
    hp.Fixed("dropout", 0.3)
    write_hyperparameters(hp, str(tmp_path / "synthetic" / config.preset))
    config.hyperparameters_dir = str(tmp_path)
    ids = {c.id for c in create_pipeline(config).components}
    assert "recorded_hyperparameters" in ids


def test_code_edits_change_exactly_the_fingerprints_of_the_code_they_affect(tmp_path):
    """An edit of the ranker changes the Trainer's code fingerprint, not the Transform's; an
    edit of preprocessing.py changes both (the Trainer reads its names); a catalog rebuilt with
    other content changes the catalog's fingerprint."""
    from pipelines.fingerprint import REPO, code_fingerprint, files_fingerprint, module_files

    assert "em3_tf/models/ranker.py" in module_files("em3_tf.tfx.trainer")
    assert "em3_tf/models/ranker.py" not in module_files("em3_tf.tfx.preprocessing")
    root = tmp_path / "repo"
    shutil.copytree(os.path.join(REPO, "em3_tf"), root / "em3_tf")
    before = {m: code_fingerprint(m, str(root))
              for m in ("em3_tf.tfx.trainer", "em3_tf.tfx.preprocessing")}
    with open(root / "em3_tf" / "models" / "ranker.py", "a") as f:
        f.write("\n# an edit\n")
    after = {m: code_fingerprint(m, str(root)) for m in before}
    assert after["em3_tf.tfx.trainer"] != before["em3_tf.tfx.trainer"]
    assert after["em3_tf.tfx.preprocessing"] == before["em3_tf.tfx.preprocessing"]
    with open(root / "em3_tf" / "tfx" / "preprocessing.py", "a") as f:
        f.write("\n# an edit\n")
    assert all(code_fingerprint(m, str(root)) != after[m] for m in before)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "catalog.npz").write_bytes(b"one")
    first = files_fingerprint(str(catalog))
    (catalog / "catalog.npz").write_bytes(b"two")
    assert files_fingerprint(str(catalog)) != first


def test_a_rerun_runs_exactly_the_components_an_edit_affects(pushed_pipeline, workspace,
                                                            monkeypatch):
    """Re-runs of the session's pipeline: with the Trainer's code fingerprint changed (as an
    edit of the ranker changes it), the Trainer re-runs and the Transform and catalog stay
    cached; with the catalog's fingerprint changed, ItemCatalogGen re-runs too."""
    from pipelines import fingerprint, pipeline, run_log
    from pipelines.config import PipelineConfig

    args = pipeline_args(workspace, "--serving-dir", str(workspace["base"] / "rerun-serving"))
    config = local_runner.config_from_args(local_runner.parse_args(args))
    watched = ("ImportExampleGen", "StatisticsGen", "Transform", "ItemCatalogGen",
               "EM3Trainer")
    real = fingerprint.code_fingerprint
    monkeypatch.setattr(pipeline, "code_fingerprint", lambda module: real(module) + (
        "-edited" if module == "em3_tf.tfx.trainer" else ""))
    local_runner.main(args)
    assert run_log.component_states(config, watched) == {
        "ImportExampleGen": "cached", "StatisticsGen": "cached", "Transform": "cached",
        "ItemCatalogGen": "cached", "EM3Trainer": "ran"}
    monkeypatch.setattr(PipelineConfig, "catalog_fingerprint", lambda self: "rebuilt")
    local_runner.main(args)
    states = run_log.component_states(config, watched)
    assert states["ItemCatalogGen"] == "ran" and states["Transform"] == "cached", states
