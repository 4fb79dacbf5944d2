"""Real-data checks on a slice of MovieLens-100K (installed by ./setup.sh with recbole)."""

import os

import numpy as np
import pytest

from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.data import movielens, records, schema
from em3_tf.data.encoders import TextEncoder


@pytest.fixture(scope="module")
def tables():
    return movielens.load_ml100k()


@pytest.fixture(scope="module")
def ml_slice(tables):
    """The first 120 users' interactions and only the items they touched (real data)."""
    log = tables["interactions"]
    log = log[log[F.USER_ID] <= 120]
    items = tables["items"][tables["items"][F.ITEM_ID].isin(log[F.ITEM_ID])]
    sliced = {"interactions": log, "items": items, "users": tables["users"]}
    return {p: movielens.build(sliced, protocol=p, max_history_len=20, progress=False)
            for p in ("temporal", "item_cold")}


def test_full_ml100k_counts(tables):
    assert len(tables["interactions"]) == 100_000
    assert tables["interactions"][F.USER_ID].nunique() == 943
    assert len(tables["items"]) == 1682
    assert tables["items"].set_index(F.ITEM_ID).loc[1, "title"].startswith("Toy Story")


def test_history_strictly_before_own_timestamp(ml_slice):
    data = ml_slice["temporal"]
    when = {}
    for split in data.splits.values():
        for u, i, t in zip(split[F.USER_ID], split[F.ITEM_ID], split["timestamp"]):
            when.setdefault((u, i), []).append(t)
    checked = 0
    for split in data.splits.values():
        for u, t, history in zip(split[F.USER_ID], split["timestamp"], split[F.HISTORY]):
            for item in history[history != F.PAD_ID]:
                assert min(when[(u, item)]) < t
                checked += 1
    assert checked > 10_000


def test_cold_test_items_never_in_training(ml_slice):
    data = ml_slice["item_cold"]
    test = data.splits["test"]
    cold = np.unique(test[F.ITEM_ID][test["is_cold_item"]])
    assert len(cold) > 20
    train = data.splits["train"]
    assert not np.isin(train[F.ITEM_ID], cold).any()
    assert not np.isin(train[F.HISTORY], cold).any()


def test_schema_accepts_built_examples_and_rejects_corrupted(ml_slice, tmp_path):
    known = schema.load_schema(os.path.join(schema.SCHEMA_DIR, "schema.pbtxt"))
    base = records.write_protocol(ml_slice["temporal"], str(tmp_path))
    good = os.path.join(base, "test", records.FILE_NAME)
    schema.check_records(good, known)

    rows = records.split_features(ml_slice["temporal"], "test")
    rows = {k: v[:50] for k, v in rows.items()}

    def corrupt(name, change):
        bad = {k: v.copy() for k, v in rows.items()}
        change(bad)
        path = str(tmp_path / f"{name}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for record in F.to_examples(bad):
                writer.write(record)
        return path

    missing = corrupt("missing", lambda b: b.pop("user_occupation"))
    with pytest.raises(schema.SchemaError, match="'user_occupation'"):
        schema.check_records(missing, known)
    out_of_domain = corrupt("domain", lambda b: b[F.ITEM_ID].__setitem__(0, -7))
    with pytest.raises(schema.SchemaError, match="'item_id'"):
        schema.check_records(out_of_domain, known)
    path = str(tmp_path / "wrong_type.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in F.to_examples(rows)[:10]:
            example = tf.train.Example.FromString(record)
            example.features.feature[F.LABEL].Clear()
            example.features.feature[F.LABEL].float_list.value.append(0.5)
            writer.write(example.SerializeToString())
    with pytest.raises(schema.SchemaError, match="'label'"):
        schema.check_records(path, known)


def test_serving_environment_does_not_require_the_label(ml_slice, tmp_path):
    known = schema.load_schema(os.path.join(schema.SCHEMA_DIR, "schema.pbtxt"))
    rows = records.split_features(ml_slice["temporal"], "test")
    serving = {k: v[:30] for k, v in rows.items()
               if k not in (F.LABEL,) + records.ANALYSIS_FEATURES}
    path = str(tmp_path / "serving.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in F.to_examples(serving):
            writer.write(record)
    schema.check_records(path, known, environment="SERVING")
    with pytest.raises(schema.SchemaError, match="'label'"):
        schema.check_records(path, known, environment="TRAINING")


def test_minilm_features_are_the_pretrained_ones():
    encoder = TextEncoder(sequence_length=24)
    texts = [movielens.item_text("Star Wars (1977)", ["Action", "Adventure", "Sci-Fi"]),
             movielens.item_text("Return of the Jedi (1983)", ["Action", "Adventure", "Sci-Fi"]),
             movielens.item_text("Sense and Sensibility (1995)", ["Drama", "Romance"])]
    tokens, mask = encoder.encode(texts)
    assert tokens.shape == (3, 24, 384) and mask.dtype == bool
    pooled = (tokens.astype(np.float32) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    similar, unrelated = pooled[0] @ pooled[1], pooled[0] @ pooled[2]
    assert similar > unrelated + 0.1, (similar, unrelated)


def test_committed_schemas_match_the_generator(tmp_path):
    schema.write_known_schemas(str(tmp_path))
    for file in schema.KNOWN:
        with open(os.path.join(schema.SCHEMA_DIR, file)) as a, open(tmp_path / file) as b:
            assert a.read() == b.read(), f"schemas/{file} is stale: run python -m em3_tf.data.schema"


def test_generic_log_layout(tmp_path):
    import pandas as pd
    pd.DataFrame({F.USER_ID: [1, 1, 2, 2, 3, 3], F.ITEM_ID: [10, 11, 10, 12, 11, 12],
                  "timestamp": [1, 2, 3, 4, 5, 6], "rating": [5, 1, 4, 2, 5, 3]}
                 ).to_csv(tmp_path / "log.csv", index=False)
    pd.DataFrame({F.ITEM_ID: [10, 11, 12, 13], "title": ["A", "B", "C", "Never seen"],
                  "genres": ["Drama|War", "Comedy", "", "Drama"], "year": [1990, 2001, 0, 1999]}
                 ).to_csv(tmp_path / "items.csv", index=False)
    tables, report = movielens.load_interaction_log(str(tmp_path / "log.csv"),
                                                    str(tmp_path / "items.csv"))
    assert report.problems == []
    data = movielens.build(tables, max_history_len=3, fractions=(0.5, 0.25, 0.25),
                           progress=False, name="log")
    assert len(data.catalog) == 4  # the never-interacted item is in the catalog
    assert data.splits["train"][F.LABEL].tolist() == [1, 0, 1]
    pd.read_csv(tmp_path / "log.csv").assign(device="phone").to_csv(tmp_path / "extra.csv",
                                                                    index=False)
    with pytest.raises(ValueError, match=r"column\(s\) \['device'\].*--drop-columns"):
        movielens.load_interaction_log(str(tmp_path / "extra.csv"), str(tmp_path / "items.csv"))
    tables, _ = movielens.load_interaction_log(str(tmp_path / "extra.csv"),
                                               str(tmp_path / "items.csv"),
                                               drop_columns=["device"])
    assert "device" not in tables["interactions"].columns
    with pytest.raises(ValueError, match="'rating' or 'label'"):
        pd.DataFrame({F.USER_ID: [1], F.ITEM_ID: [10], "timestamp": [1]}).to_csv(
            tmp_path / "bad.csv", index=False)
        movielens.load_interaction_log(str(tmp_path / "bad.csv"), str(tmp_path / "items.csv"))


def test_grouplens_layout(tmp_path):
    """A user's own GroupLens ml-100k copy (u.data / u.item / u.user, latin-1, genre flags)."""
    flags = ["0"] * 19
    star_wars, comedy = list(flags), list(flags)
    star_wars[1] = star_wars[15] = "1"  # Action, Sci-Fi
    comedy[5] = "1"
    (tmp_path / "u.item").write_bytes(
        ("1|Star Wars (1977)|01-Jan-1977||http://x|" + "|".join(star_wars) + "\n"
         "2|Amélie (2001)|01-Jan-2001||http://y|" + "|".join(comedy) + "\n").encode("latin-1"))
    (tmp_path / "u.data").write_text("1\t1\t5\t100\n1\t2\t2\t200\n2\t1\t4\t300\n")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    tables = movielens.load_ml100k(str(tmp_path))
    items = tables["items"].set_index(F.ITEM_ID)
    assert items.loc[1, "genres"] == ["Action", "Sci-Fi"] and items.loc[1, "year"] == 1977
    assert items.loc[2, "title"] == "Amélie (2001)" and items.loc[2, "genres"] == ["Comedy"]
    assert tables["interactions"]["rating"].tolist() == [5, 2, 4]
    assert movielens.user_context(tables["users"], np.array([2, 1, 9]))["user_gender"].tolist() \
        == [0, 1, -1]
