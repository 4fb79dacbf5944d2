"""Validation and cleaning of a user's own log (`em3_tf.data.cleaning`), on fixed dirty tables.

Every bad row of the dirty log has exactly one problem, so each check's count is known; the
`kind` column marks each row ("ok<i>" for the clean ones, which must come back unchanged).
"""

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from em3_tf.data.cleaning import BadDataError, clean, parse_timestamps

NOON = int(datetime(2024, 3, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp())  # 1709294400


def _sku(i):
    return f"SKU-{i:05d}"


def dirty_tables():
    items = pd.DataFrame({
        "item_id": [_sku(i) for i in range(1, 11)] + [_sku(3), _sku(4), None],
        "title": ["Item %d" % i for i in range(1, 11)] + ["Other 3", "Item 4", "No id"],
        "genres": ["A|B"] * 13})
    items.loc[4, "title"] = ""     # SKU-00005: empty title
    items.loc[5, "title"] = np.nan  # SKU-00006: missing title
    # Clean rows: ISO (with and without timezone), epoch ints and numeric strings, mixed.
    stamps = [NOON, str(NOON + 60), "2024-03-01T12:00:00Z", "2024-03-01 12:02:00",
              "2024-03-01T13:03:00+01:00", NOON + 240, "2024-03-01T12:05:00.000Z", NOON + 360]
    expected_ts = [NOON, NOON + 60, NOON, NOON + 120, NOON + 180, NOON + 240, NOON + 300,
                   NOON + 360]
    users = ["u_0042", "u_0007", "u_0042", " u_0003 ", "u_0007", "u_0042", "u_0003", "u_0009"]
    item_of = [_sku(1), _sku(3), _sku(4), _sku(5), _sku(6), _sku(17 - 7), _sku(3), _sku(2)]
    ratings = [5.0, 3.0, 4.0, 1.0, 4.5, 2.0, 5.0, 3.5]
    rows = [dict(user_id=u, item_id=i, timestamp=t, rating=r, kind=f"ok{k}")
            for k, (u, i, t, r) in enumerate(zip(users, item_of, stamps, ratings))]
    bad = lambda kind, **kw: dict(dict(user_id="u_0042", item_id=_sku(1), timestamp=NOON,  # noqa
                                       rating=4.0, kind=kind), **kw)
    rows += [bad("nan_rating", rating=np.nan) for _ in range(3)]
    rows += [bad("neg_rating", rating=-1.0)]
    rows += [dict(rows[1])]  # an exact copy of ok1
    rows += [dict(rows[0], timestamp="2024-03-01T12:00:00Z", user_id=" u_0042")]  # ok0, parsed
    rows += [bad("unknown", item_id=f"SKU-9999{i}") for i in range(4)]
    rows += [bad("bad_ts", timestamp=t) for t in ("not a time", None, "2024-13-45")]
    rows += [bad("no_user", user_id=None), bad("no_item", item_id="  ")]
    log = pd.DataFrame(rows)
    expected = {("nan_rating", "interactions", "rating"): 3,
                ("rating_out_of_range", "interactions", "rating"): 1,
                ("duplicate_rows", "interactions", "all columns"): 2,
                ("unknown_item", "interactions", "item_id"): 4,
                ("bad_timestamp", "interactions", "timestamp"): 3,
                ("missing_id", "interactions", "user_id"): 1,
                ("missing_id", "interactions", "item_id"): 1,
                ("duplicate_item_id", "items", "item_id"): 2,
                ("missing_id", "items", "item_id"): 1,
                ("empty_title", "items", "title"): 2}
    return log, items, expected, expected_ts, ratings


def test_drop_counts_every_problem_and_keeps_exactly_the_clean_rows():
    log, items, expected, expected_ts, ratings = dirty_tables()
    out_log, out_items, report = clean(log, items, on_bad_rows="drop")
    got = {(p.check, p.table, p.column): p.count for p in report.problems}
    assert got == expected
    for p in report.problems:
        assert p.action == ("kept" if p.check == "empty_title" else "dropped")
        assert 1 <= len(p.examples) <= 5 and all("row" in e for e in p.examples)
    assert list(out_log["kind"]) == [f"ok{k}" for k in range(8)]
    assert report.rows_in == {"interactions": len(log), "items": len(items)}
    assert report.rows_out == {"interactions": len(out_log), "items": len(out_items)}
    dropped = sum(p.count for p in report.problems if p.action == "dropped")
    assert dropped == len(log) - len(out_log) + len(items) - len(out_items)
    # Timestamps: int64 unix seconds, ISO and epoch alike.
    assert out_log["timestamp"].dtype == np.int64
    assert out_log["timestamp"].tolist() == expected_ts
    # Labels from the ratings only; no NaN rating became a label.
    assert out_log["label"].dtype == np.int64
    assert out_log["label"].tolist() == [int(r >= 4.0) for r in ratings]
    assert out_log["rating"].tolist() == ratings
    # String ids stay str, stripped; items keep the first row of a duplicated id.
    assert out_log["user_id"].tolist()[:4] == ["u_0042", "u_0007", "u_0042", "u_0003"]
    assert all(isinstance(v, str) for v in out_log["item_id"])
    assert out_items["item_id"].tolist() == [_sku(i) for i in range(1, 11)]
    assert out_items.loc[2, "title"] == "Item 3"
    assert out_items["has_title"].tolist() == [i not in (5, 6) for i in range(1, 11)]
    assert out_items.loc[[4, 5], "title"].tolist() == ["", ""]
    assert set(out_log["item_id"]) <= set(out_items["item_id"])
    examples = {p.check: p.examples for p in report.problems}
    assert {e["item_id"] for e in examples["unknown_item"]} == {f"SKU-9999{i}" for i in range(4)}
    first_nan = int(np.flatnonzero(log["kind"] == "nan_rating")[0])
    assert examples["nan_rating"][0] == {"row": first_nan, "rating": None}
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["rows_in"] == report.rows_in
    assert len(report.lines()) == len(report.problems) + 2


def test_fail_raises_one_error_listing_every_problem():
    log, items, expected, _, _ = dirty_tables()
    with pytest.raises(BadDataError) as err:
        clean(log, items, on_bad_rows="fail")
    message = str(err.value)
    for (check, table, column), count in expected.items():
        if check == "empty_title":  # a warning: kept, never fails
            assert f"{check}: {table}.{column}, {count} row(s) kept" not in message
        else:
            assert f"{check}: {table}.{column}, {count} row(s) failed" in message
    for kind in ("nan_rating", "bad_ts", "unknown"):
        assert f"row {int(np.flatnonzero(log['kind'] == kind)[0])}: " in message
    assert "'not a time'" in message and "'SKU-99990'" in message
    got = {(p.check, p.table, p.column): p.count for p in err.value.report.problems}
    assert got == expected


def test_clean_log_has_no_problems():
    log, items, _, _, _ = dirty_tables()
    log, items = log.iloc[:8], items.iloc[:10].copy()
    items.loc[[4, 5], "title"] = ["Item 5", "Item 6"]
    out_log, out_items, report = clean(log, items, on_bad_rows="fail")
    assert report.problems == [] and report.lines()[0] == "no problems found"
    assert len(out_log) == len(log) and len(out_items) == len(items)
    assert out_items["has_title"].all()


def test_warnings_do_not_fail():
    log, items, _, _, _ = dirty_tables()
    log = log.iloc[:8]
    _, out_items, report = clean(log, items.iloc[:10], on_bad_rows="fail")
    assert [(p.check, p.count, p.action) for p in report.problems] == [("empty_title", 2, "kept")]
    assert len(out_items) == 10


def test_label_column_decides_and_checks_labels():
    log = pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [10, 11, 10, 11, 10],
                        "timestamp": [NOON + i for i in range(5)],
                        "label": [1, 0, np.nan, 2, 0], "rating": [np.nan, 5.0, 1.0, 1.0, 2.0]})
    items = pd.DataFrame({"item_id": [10, 11], "title": ["a", "b"]})
    out, _, report = clean(log, items, on_bad_rows="drop")
    got = {p.check: (p.count, p.action) for p in report.problems}
    assert got == {"nan_rating": (1, "kept"), "nan_label": (1, "dropped"),
                   "label_out_of_range": (1, "dropped")}
    assert out["label"].tolist() == [1, 0, 0] and out["label"].dtype == np.int64
    assert out["rating"].tolist() == [0.0, 5.0, 2.0]


def test_int_like_ids_become_int64_any_string_makes_str():
    log = pd.DataFrame({"user_id": [1, "2", " 3 ", 4.0], "item_id": ["17", 18, 17.0, " 19"],
                        "timestamp": [NOON] * 4, "rating": [1.0, 2.0, 3.0, 4.0]})
    items = pd.DataFrame({"item_id": [17, 18, 19], "title": ["a", "b", "c"]})
    out, out_items, report = clean(log, items)
    assert report.problems == []
    assert out["user_id"].dtype == np.int64 and out["user_id"].tolist() == [1, 2, 3, 4]
    assert out["item_id"].dtype == np.int64 and out["item_id"].tolist() == [17, 18, 17, 19]
    assert out_items["item_id"].dtype == np.int64

    items = pd.DataFrame({"item_id": [17, 18, 19, "SKU-1"], "title": ["a", "b", "c", "d"]})
    out, out_items, report = clean(log, items)
    assert out["user_id"].dtype == np.int64  # user ids are typed independently
    assert out["item_id"].tolist() == ["17", "18", "17", "19"]
    assert out_items["item_id"].tolist() == ["17", "18", "19", "SKU-1"]
    assert all(isinstance(v, str) for v in list(out["item_id"]) + list(out_items["item_id"]))


def test_parse_timestamps_mixed_forms():
    values = pd.Series([NOON, "1709294400", "2024-03-01T12:00:00Z", "2024-03-01 12:00:00",
                        "2024-03-01T07:00:00-05:00", float(NOON), "", None, "garbage"])
    seconds, ok = parse_timestamps(values)
    assert seconds.dtype == np.int64
    assert ok.tolist() == [True] * 6 + [False] * 3
    assert seconds[:6].tolist() == [NOON] * 6
    # A datetime64 column (e.g. from Parquet): naive is UTC, aware is converted.
    naive = pd.Series(pd.to_datetime(["2024-03-01 12:00:00", None]))
    seconds, ok = parse_timestamps(naive)
    assert seconds[0] == NOON and ok.tolist() == [True, False]
    seconds, ok = parse_timestamps(naive.dt.tz_localize("Europe/Paris"))
    assert seconds[0] == NOON - 3600 and ok.tolist() == [True, False]


def test_bad_policy_and_missing_columns_are_value_errors():
    log, items, _, _, _ = dirty_tables()
    with pytest.raises(ValueError, match=r"on_bad_rows.*'skip'"):
        clean(log, items, on_bad_rows="skip")
    with pytest.raises(ValueError, match=r"interactions.*timestamp") as err:
        clean(log.drop(columns="timestamp"), items)
    assert not isinstance(err.value, BadDataError)
    with pytest.raises(ValueError, match=r"interactions.*rating.*label"):
        clean(log.drop(columns="rating"), items)
    with pytest.raises(ValueError, match=r"items.*title"):
        clean(log, items.drop(columns="title"))
    with pytest.raises(ValueError, match=r"items.*item_id"):
        clean(log, items.drop(columns="item_id"))
