"""A team's own data end to end: a SYNTHETIC shop log with string ids, built, trained by the
TFX pipeline, pushed, served by the local server and ranked by user id through the behaviour
store; dirty data reported and handled; data sets kept apart."""

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import keras_scorer
from em3_tf import features as F

PIPELINE_EPOCHS = "3"


@pytest.fixture(scope="module")
def shop(tmp_path_factory, workspace):
    """The shop log built (store filled) and run through the pipeline with default names,
    in the same work and serving directories as the session's SYNTHETIC pipeline."""
    from em3_tf.data import build
    from em3_tf.data.shop import write_shop
    from pipelines import local_runner

    base = tmp_path_factory.mktemp("shop")
    interactions, items = write_shop(str(base / "raw"), num_users=60, num_items=80,
                                     num_interactions=3000, seed=0)
    data = str(base / "shop")
    store = f"sqlite:///{base / 'store.db'}"
    assert build.main(["--interactions", interactions, "--items", items, "--out", data,
                       "--store", store, "--cache-dir", str(base / "cache")]) == 0
    args = ["--data", data, "--epochs", PIPELINE_EPOCHS, "--work-dir", workspace["work"],
            "--serving-dir", workspace["serving"]]
    code = local_runner.main(args)
    config = local_runner.config_from_args(local_runner.parse_args(args))
    return {"data": data, "store": store, "config": config, "code": code,
            "summary": local_runner.summarize(config), "raw": (interactions, items)}


def test_string_ids_are_kept_end_to_end(shop):
    from em3_tf.data import records
    with open(os.path.join(shop["data"], "summary.json")) as f:
        assert json.load(f)["string_ids"] is True
    test = records.read_split(shop["data"], "item_cold", "test")
    assert test[F.USER_ID][0].startswith("u_") and test[F.ITEM_ID][0].startswith("SKU-")
    with open(os.path.join(shop["data"], "schema.pbtxt")) as f:
        assert 'name: "user_id"\n  type: BYTES' in f.read()


def test_shop_pipeline_is_blessed_against_the_popularity_floor_and_pushed(shop):
    summary, config = shop["summary"], shop["config"]
    assert shop["code"] == 0, summary.get("failed_thresholds")
    assert summary["blessed"] and summary["pushed"]
    floor = config.value_floor()
    assert floor == config.data_summary()["protocols"]["item_cold"]["popularity_eval_auc"]
    assert summary["evaluation"]["overall"]["auc"] >= floor


def test_rank_by_user_id_through_the_store_equals_the_keras_model(shop):
    """Served scores (local server, gRPC, history read from the SQLite store) = the Keras
    model rebuilt from the pushed weights on the same store features (tolerance 1e-5)."""
    from em3_tf.behaviour_store import open_store
    from serving.client import EM3Client, UnknownItemWarning
    from serving.local_server import serve, single_model_config

    config, summary = shop["config"], shop["summary"]
    log = pd.read_csv(shop["raw"][0])
    user, at = "u_0007", 1_800_000_000  # after every logged event
    candidates = ["SKU-00003", "SKU-00017", "SKU-00042", "SKU-00080"]
    server = serve(single_model_config(config.model_name, config.push_base), port=0)
    try:
        with open_store(shop["store"]) as store, EM3Client(
                f"127.0.0.1:{server.port}", config.model_name, store=store,
                timeout_s=60) as client:
            ranked = client.rank(user, candidates, at=at)
            features = store.features(user, at=at, max_len=client.max_history_len)
            with pytest.warns(UnknownItemWarning, match="SKU-99999"):
                unknown = client.rank(user, candidates + ["SKU-99999"], at=at)
            strict = EM3Client(f"127.0.0.1:{server.port}", config.model_name, store=store,
                               timeout_s=60, strict=True)
            with pytest.raises(Exception, match="INVALID_ARGUMENT.*SKU-99999"):
                strict.rank(user, candidates + ["SKU-99999"], at=at)
            strict.close()
    finally:
        server.stop(0)
    assert len(features[F.HISTORY]) == min(50, int((log["user_id"] == user).sum()))
    assert unknown.unknown_items == ["SKU-99999"] and ranked.unknown_items == []
    rows = {F.USER_ID: np.array([user] * len(candidates)),
            F.ITEM_ID: np.array(candidates),
            **{name: np.repeat(np.asarray(features[name])[None], len(candidates), axis=0)
               for name in F.SEQUENCES},
            **{name: np.full(len(candidates), features[name]) for name in F.USER_STATISTICS}}
    expected = dict(zip(candidates, keras_scorer(summary, config)(rows)))
    served = dict(ranked)
    assert [item for item, _ in ranked] == sorted(candidates, key=lambda c: -expected[c])
    np.testing.assert_allclose([served[c] for c in candidates],
                               [expected[c] for c in candidates], atol=1e-5)


def test_two_data_sets_never_share_metadata_baseline_or_push_directory(shop, pushed_pipeline):
    """Both pipelines ran with default names in the same work and serving directories."""
    from pipelines import local_runner

    synthetic_summary, synthetic = pushed_pipeline
    ours = shop["config"]
    assert ours.pipeline_name != synthetic.pipeline_name
    assert ours.metadata_path != synthetic.metadata_path
    assert ours.pipeline_root != synthetic.pipeline_root
    assert ours.push_base != synthetic.push_base
    assert not set(shop["summary"]["serving_versions"]) & set(os.listdir(synthetic.push_base))
    # Separate ML Metadata databases: the shop's Evaluator cannot resolve a SYNTHETIC model
    # as its baseline, and none of its artifacts lie under the SYNTHETIC pipeline's root.
    assert all(not uri.startswith(synthetic.pipeline_root)
               for uri in shop["summary"]["artifacts"].values())
    # A pipeline name stays bound to its data: reusing the SYNTHETIC one for the shop fails.
    with pytest.raises(SystemExit, match="pass another --pipeline-name"):
        local_runner.main(["--data", shop["data"], "--pipeline-name", synthetic.pipeline_name,
                           "--work-dir", os.path.dirname(os.path.dirname(
                               synthetic.metadata_path))])


DIRTY_COUNTS = {"nan_rating": 3, "duplicate_rows": 2, "unknown_item": 4, "bad_timestamp": 3,
                "duplicate_item_id": 2, "empty_title": 2}


def _dirty_shop(base):
    """The shop log with planted problems (`DIRTY_COUNTS`); `clean` marks the clean rows."""
    from em3_tf.data.shop import make_shop
    log, items = make_shop(num_users=30, num_items=40, num_interactions=600, seed=1)
    log = log.iloc[:300].copy()
    log["clean"] = True
    log.loc[log.index[:3], "rating"] = np.nan
    log.loc[log.index[3:7], "item_id"] = "SKU-99999"
    log.loc[log.index[7:10], "timestamp"] = "not a time"
    log.loc[log.index[10:50], "timestamp"] = (pd.to_datetime(log["timestamp"].iloc[10:50])
                                              .astype("int64") // 10 ** 9).astype(str)
    log.loc[log.index[:10], "clean"] = False
    duplicates = log.iloc[20:22].copy()
    duplicates["clean"] = False
    log = pd.concat([log, duplicates], ignore_index=True)
    items.loc[items.index[:2], "title"] = ""
    items = pd.concat([items, items.iloc[5:7]], ignore_index=True)
    log.drop(columns="clean").to_csv(base / "interactions.csv", index=False)
    items.to_csv(base / "items.csv", index=False)
    return log


def test_dirty_data_is_reported_at_once_and_dropped_or_refused(tmp_path):
    from em3_tf.data import build
    from em3_tf.data.cleaning import BadDataError

    log = _dirty_shop(tmp_path)
    common = ["--interactions", str(tmp_path / "interactions.csv"),
              "--items", str(tmp_path / "items.csv"), "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "fail"
    with pytest.raises(BadDataError) as error:
        build.main(common + ["--out", str(out)])
    message = str(error.value)
    for check, column in (("nan_rating", "rating"), ("duplicate_rows", "all columns"),
                          ("unknown_item", "item_id"), ("bad_timestamp", "timestamp"),
                          ("duplicate_item_id", "item_id")):
        assert f"{check}: " in message and f".{column}, {DIRTY_COUNTS[check]} row(s)" in message
    assert "row 3" in message  # example rows are named
    assert not out.exists() and not os.path.exists(str(out) + ".tmp-build")

    out = tmp_path / "drop"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert build.main(common + ["--out", str(out), "--on-bad-rows", "drop"]) == 0
    with open(out / "summary.json") as f:
        summary = json.load(f)
    counts = {p["check"]: p["count"] for p in summary["data_report"]["problems"]}
    assert counts == DIRTY_COUNTS
    clean = int(log["clean"].sum())
    assert summary["data_report"]["rows_out"]["interactions"] == clean
    assert sum(s["examples"] for name, s in summary["protocols"]["temporal"].items()
               if name in ("train", "eval", "test")) == clean


def test_score_table_lines_scores_up_with_ids(shop, tmp_path):
    """Batch scoring with the pushed model: one row per example with its ids and label,
    scores equal to the Keras model's (tolerance 1e-5), and the CLI writes the same table."""
    from em3_tf.data import records
    from em3_tf.scoring import main, score_table

    config, summary = shop["config"], shop["summary"]
    version_dir = os.path.join(config.push_base, summary["serving_versions"][-1])
    test = records.read_split(shop["data"], "item_cold", "test")
    rows = {name: value[:40] for name, value in test.items()}
    table = score_table(version_dir, rows)
    assert list(table.columns) == ["user_id", "item_id", "score", "label", "in_catalog"]
    assert table["user_id"].tolist() == rows[F.USER_ID].tolist()
    assert table["item_id"].tolist() == rows[F.ITEM_ID].tolist()
    assert table["label"].tolist() == rows[F.LABEL].tolist() and table["in_catalog"].all()
    expected = keras_scorer(summary, config)({n: rows[n] for n in F.raw_features()})
    np.testing.assert_allclose(table["score"], expected, atol=1e-5)
    out = str(tmp_path / "scores.csv")
    assert main(["--model", version_dir, "--data", shop["data"], "--out", out]) == 0
    written = pd.read_csv(out)
    assert len(written) == len(test[F.LABEL])
    np.testing.assert_allclose(written["score"][:40], table["score"], atol=1e-6)


def test_data_catalog_and_fingerprints_round_trip_on_a_remote_filesystem(tmp_path):
    """What the pipeline reads and writes through `tf.io.gfile` works on a non-local
    filesystem. TF's in-memory `ram://` filesystem stands in for `gs://` (no cloud here):
    a data build's records, catalog and summary written there read back equal to a local
    copy, and the catalog's fingerprint (a cache key of the pipeline) is the same."""
    from em3_tf.catalog import ItemCatalog
    from em3_tf.data.records import load_dataset, write_dataset
    from em3_tf.data.synthetic import make_synthetic
    from pipelines.fingerprint import files_fingerprint

    data = make_synthetic(num_users=30, num_items=90, max_history_len=5, seed=2)
    remote, local = "ram://em3-test-bucket/data", str(tmp_path / "data")
    assert write_dataset([data], remote) == write_dataset([data], local)
    back, here = load_dataset(remote, data.protocol), load_dataset(local, data.protocol)
    for split in ("train", "eval", "test"):
        for name, value in here.splits[split].items():
            np.testing.assert_array_equal(back.splits[split][name], value, err_msg=name)
    catalog = ItemCatalog.load(f"{remote}/catalog")
    np.testing.assert_array_equal(catalog.item_ids, data.catalog.item_ids)
    assert files_fingerprint(f"{remote}/catalog") == files_fingerprint(f"{local}/catalog")
