"""Shared fixtures. Every test seeds its own randomness; tolerances are stated where used."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from em3_tf._tf import tf  # noqa: E402,F401


@pytest.fixture(scope="session")
def small_data():
    """SYNTHETIC data, small enough for one-step checks."""
    from em3_tf.data.synthetic import make_synthetic
    return make_synthetic(num_users=60, num_items=90, max_history_len=10, seed=3)


@pytest.fixture(scope="session")
def cold_start_data():
    """SYNTHETIC item-cold data used for the cold-start quality test."""
    from em3_tf.data.synthetic import make_synthetic
    return make_synthetic(num_users=600, max_history_len=20, seed=0)


# The TFX pipeline, run once per session on SYNTHETIC data; its pushed model serves the
# pipeline and serving tests.
EPOCHS = "3"
FLOOR = "0.55"


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    from em3_tf.data import records
    from em3_tf.data.synthetic import make_synthetic
    base = tmp_path_factory.mktemp("pipeline")
    data_dir = str(base / "data")
    records.write_dataset([make_synthetic(protocol="item_cold", max_history_len=20, seed=0)],
                          data_dir)
    return {"data": data_dir, "work": str(base / "tfx"), "serving": str(base / "serving"),
            "base": base}


def pipeline_args(ws, *extra):
    import json
    return ["--data", ws["data"], "--epochs", EPOCHS, "--auc-floor", FLOOR,
            "--em3-config", json.dumps({"max_history_len": 20, "learning_rate": 0.003}),
            "--work-dir", ws["work"], "--serving-dir", ws["serving"], *extra]


def pipeline_summary(ws):
    from pipelines import local_runner
    config = local_runner.config_from_args(local_runner.parse_args(pipeline_args(ws)))
    return local_runner.summarize(config), config


@pytest.fixture(scope="session")
def pushed_pipeline(workspace):
    """`(summary, PipelineConfig)` after one blessed, pushed pipeline run."""
    from pipelines import local_runner
    local_runner.main(pipeline_args(workspace))
    return pipeline_summary(workspace)


def first_rows(data, split, n):
    return {k: v[:n] for k, v in data.model_features(split).items()}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def keras_scorer(summary, config):
    """`score(rows) -> np.ndarray`: the Keras EM3Ranker rebuilt with the newest pushed
    version's weights, fed raw feature rows through the pipeline's transform graph."""
    import os

    import tensorflow_transform as tft

    from em3_tf import features as F
    from em3_tf.catalog import ItemCatalog
    from em3_tf.export import load_config
    from em3_tf.models.ranker import EM3Ranker
    from em3_tf.tfx.trainer import transformed_vocabularies

    version_dir = os.path.join(config.push_base, summary["serving_versions"][-1])
    tft_output = tft.TFTransformOutput(summary["artifacts"]["Transform/transform_graph"])
    em3_config = load_config(version_dir)
    model = EM3Ranker(em3_config, transformed_vocabularies(
        tft_output, F.scalar_features(em3_config.context_features)),
        ItemCatalog.load(summary["artifacts"]["ItemCatalogGen/item_catalog"]))
    layer = tft_output.transform_features_layer()
    spec = tft_output.raw_feature_spec()

    def score(rows):
        serialized = tf.constant(F.to_examples(rows))
        raw = tf.io.parse_example(serialized, {n: s for n, s in spec.items() if n in rows})
        scores = model(layer(raw)).numpy()
        if not score.restored:  # the first call built the variables: load the pushed ones
            status = tf.train.Checkpoint(root=model).read(
                os.path.join(version_dir, "variables", "variables"))
            status.expect_partial().assert_existing_objects_matched()
            score.restored = True
            scores = model(layer(raw)).numpy()
        return scores

    score.model, score.restored = model, False
    return score


def rss_mb(pid="self") -> float:
    """Resident memory (MB) of process `pid` (default: this one), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024
