"""Validation and cleaning of a user's own interaction log and item table, before the build.

Nothing is lost silently: every problem is counted and reported (`DataReport`, which goes into
summary.json under "data_report"). `on_bad_rows` decides what happens to bad rows:

  | check               | table.column             | "drop"                      | "fail" |
  |---------------------|--------------------------|-----------------------------|--------|
  | missing_id          | interactions.user_id     | drop the row                | fail   |
  | missing_id          | interactions.item_id     | drop the row                | fail   |
  | bad_timestamp       | interactions.timestamp   | drop the row                | fail   |
  | nan_label           | interactions.label       | drop the row                | fail   |
  | label_out_of_range  | interactions.label       | drop the row (not 0/1)      | fail   |
  | nan_rating          | interactions.rating      | drop the row (no label col) | fail   |
  | nan_rating          | interactions.rating      | with a label column: kept, rating 0 ("none") |
  | rating_out_of_range | interactions.rating      | drop (negative, inf, text)  | fail   |
  | duplicate_rows      | interactions.all columns | keep the first copy         | fail   |
  | missing_id          | items.item_id            | drop the row                | fail   |
  | duplicate_item_id   | items.item_id            | keep the first row          | fail   |
  | empty_title         | items.title              | a warning: kept, title "", has_title False |
  | unknown_item        | interactions.item_id     | drop (not in cleaned items) | fail   |

Checks run in the table's order within each table (the item table first: unknown_item needs
its cleaned ids), and a row is counted under the first check it fails only, so the dropped counts add up to `rows_in - rows_out` (under "fail" the counts are the
same: what "drop" would drop). Under "fail" every problem is collected first, then one
`BadDataError` lists them all; "kept" problems never fail.

Outputs: `timestamp` is int64 unix seconds (epoch seconds, numeric strings and ISO-8601, mixed
in one column, naive = UTC); `label` is int64 (the log's 0/1 label, else rating >=
`label_threshold`); ids keep their values, stripped of surrounding whitespace, as int64 when
every id of the column is an integer (or a canonical integer string such as "17"; "00017"
keeps its zeros as a string id), else as str. The item
ids of the log and of the item table are typed together (over all their non-missing input
ids), so that they stay comparable; user ids independently. Other columns pass through.
"""

import dataclasses
import datetime
import re
from typing import List, Tuple

import numpy as np
import pandas as pd

POLICIES = ("fail", "drop")
_INT = re.compile(r"[+-]?\d+")
_MAX_EXAMPLES = 5


class BadDataError(ValueError):
    """Bad rows under `on_bad_rows="fail"`; the message lists every problem; `.report` has them."""

    def __init__(self, report: "DataReport"):
        self.report = report
        failed = [p for p in report.problems if p.action == "failed"]
        lines = [f"{len(failed)} data problem(s) found (on_bad_rows='fail'; pass "
                 f"on_bad_rows='drop' to drop these rows and report them):"]
        lines += ["  - " + p.describe() for p in failed]
        super().__init__("\n".join(lines))


@dataclasses.dataclass
class Problem:
    """One row-level problem: `count` rows of `table` fail `check` on `column`."""
    check: str
    table: str
    column: str
    count: int
    action: str  # "dropped" | "kept" | "failed"
    examples: list  # up to 5 rows: {"row": index in the input, column: value}

    def describe(self) -> str:
        shown = "; ".join(f"row {e['row']}: " + ", ".join(
            f"{k}={v!r}" for k, v in e.items() if k != "row") for e in self.examples)
        return (f"{self.check}: {self.table}.{self.column}, {self.count} row(s) {self.action}"
                + (f", e.g. {shown}" if shown else ""))


@dataclasses.dataclass
class DataReport:
    """Rows in and out of each table, and every problem found."""
    rows_in: dict
    rows_out: dict
    problems: list

    def to_dict(self) -> dict:
        return {"rows_in": dict(self.rows_in), "rows_out": dict(self.rows_out),
                "problems": [dataclasses.asdict(p) for p in self.problems]}

    def lines(self) -> List[str]:
        out = [p.describe() for p in self.problems] or ["no problems found"]
        return out + [f"{t}: {self.rows_in[t]} rows in, {self.rows_out.get(t, 0)} out"
                      for t in self.rows_in]


def _jsonable(v):
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return None if v is None or np.isnan(v) else str(v)
    return v if isinstance(v, (str, int, float, bool)) else str(v)


def _missing(v) -> bool:
    return v is None or (np.ndim(v) == 0 and pd.isna(v)) or (isinstance(v, str) and not v.strip())


def _id_key(v):
    """(text form, int value or None) of one non-missing id."""
    if isinstance(v, (bool, np.bool_)):
        return str(v), None
    if isinstance(v, (int, np.integer)):
        return str(int(v)), int(v)
    if isinstance(v, (float, np.floating)):
        return (str(int(v)), int(v)) if float(v).is_integer() else (repr(float(v)), None)
    s = str(v).strip()  # an integer only in canonical form: "00017" stays a string id
    return s, (int(s) if _INT.fullmatch(s) and str(int(s)) == s else None)


def _normalise_ids(*columns: pd.Series) -> Tuple[list, bool]:
    """Per column: (object array of ids, None where missing); and whether they are all ints."""
    keys = [[None if _missing(v) else _id_key(v) for v in c.tolist()] for c in columns]
    all_int = all(k[1] is not None for ks in keys for k in ks if k is not None)
    out = [np.array([None if k is None else k[1 if all_int else 0] for k in ks], dtype=object)
           for ks in keys]
    return out, all_int


def _seconds(dt: pd.Series) -> np.ndarray:
    return ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy()


def parse_timestamps(values: pd.Series) -> Tuple[np.ndarray, np.ndarray]:
    """Timestamps -> (int64 unix seconds, ok): epoch seconds (numbers or numeric strings),
    ISO-8601 strings and datetimes, mixed in one column; naive ones are UTC."""
    s = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(s):  # e.g. a Parquet timestamp column
        dt = pd.to_datetime(s, utc=True)
        return np.nan_to_num(_seconds(dt).astype(float)).astype(np.int64), dt.notna().to_numpy()
    if s.dtype == bool:
        return np.zeros(len(s), np.int64), np.zeros(len(s), bool)
    num = pd.to_numeric(s, errors="coerce").to_numpy(float)
    ok = np.isfinite(num)
    secs = np.floor(np.where(ok, num, 0)).astype(np.int64)
    rest = ~ok & s.map(lambda v: (isinstance(v, str) and bool(v.strip()))
                       or isinstance(v, (datetime.datetime, np.datetime64))).to_numpy(bool)
    if rest.any():
        text = s[rest].map(lambda v: v.strip() if isinstance(v, str) else v)
        dt = pd.to_datetime(text, utc=True, errors="coerce")  # fast path: one format
        for i in np.flatnonzero(dt.isna().to_numpy()):  # mixed forms: one at a time
            try:
                t = pd.Timestamp(text.iloc[i])
                dt.iloc[i] = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
            except (ValueError, TypeError, OverflowError):
                pass
        good = dt.notna().to_numpy()
        idx = np.flatnonzero(rest)[good]
        secs[idx], ok[idx] = _seconds(dt[good]).astype(np.int64), True
    return secs, ok


def _require(table: pd.DataFrame, name: str, columns) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"The {name} table is missing column(s) {missing}; it has "
                         f"{list(table.columns)}.")


def clean(log: pd.DataFrame, items: pd.DataFrame, on_bad_rows: str = "fail",
          label_threshold: float = 4.0) -> Tuple[pd.DataFrame, pd.DataFrame, DataReport]:
    """Validated, cleaned copies of (`log`, `items`) and the `DataReport`; see the module doc.

    Raises `BadDataError` (under "fail") listing every problem, or `ValueError` for a bad
    `on_bad_rows` or missing columns.
    """
    if on_bad_rows not in POLICIES:
        raise ValueError(f"on_bad_rows must be one of {POLICIES}, got {on_bad_rows!r}.")
    _require(log, "interactions", ("user_id", "item_id", "timestamp"))
    if "rating" not in log.columns and "label" not in log.columns:
        raise ValueError(f"The interactions table is missing column(s) ['rating' or 'label'];"
                         f" it has {list(log.columns)}.")
    _require(items, "items", ("item_id", "title"))
    fail_action = "failed" if on_bad_rows == "fail" else "dropped"
    problems: List[Problem] = []

    def check(name, table, column, bad, values, alive, rows, kept=False, also=None):
        bad = np.asarray(bad, bool) & alive
        if bad.any():
            cols = {**(also or {}), column: values}
            ex = [{"row": int(rows[i]), **{c: _jsonable(v[i]) for c, v in cols.items()}}
                  for i in np.flatnonzero(bad)[:_MAX_EXAMPLES]]
            problems.append(Problem(name, table, column, int(bad.sum()),
                                    "kept" if kept else fail_action, ex))
        if not kept:
            alive &= ~bad
        return bad

    def row_numbers(table):
        ints = pd.api.types.is_integer_dtype(table.index)
        return np.asarray(table.index) if ints else np.arange(len(table))

    (users,), user_int = _normalise_ids(log["user_id"])
    (log_items, item_items), item_int = _normalise_ids(log["item_id"], items["item_id"])

    # The item table first: the log's unknown_item check needs its cleaned ids.
    n_items, irows = len(items), row_numbers(items)
    ialive = np.ones(n_items, bool)
    check("missing_id", "items", "item_id", [v is None for v in item_items],
          items["item_id"].to_numpy(object), ialive, irows)
    dup = pd.Series(item_items).where(ialive).duplicated() & ialive
    check("duplicate_item_id", "items", "item_id", dup, item_items, ialive, irows)
    titles = items["title"].to_numpy(object)
    has_title = np.array([not _missing(t) for t in titles], bool)
    check("empty_title", "items", "title", ~has_title, titles, ialive, irows, kept=True,
          also={"item_id": item_items})

    n_log, rows = len(log), row_numbers(log)
    alive = np.ones(n_log, bool)
    check("missing_id", "interactions", "user_id", [v is None for v in users],
          log["user_id"].to_numpy(object), alive, rows)
    check("missing_id", "interactions", "item_id", [v is None for v in log_items],
          log["item_id"].to_numpy(object), alive, rows)
    seconds, ok = parse_timestamps(log["timestamp"])
    check("bad_timestamp", "interactions", "timestamp", ~ok,
          log["timestamp"].to_numpy(object), alive, rows)
    out_cols = {"user_id": users, "item_id": log_items, "timestamp": seconds}
    if "label" in log.columns:
        raw = log["label"].to_numpy(object)
        lab = pd.to_numeric(log["label"], errors="coerce").to_numpy(float)
        nan = log["label"].isna().to_numpy()
        check("nan_label", "interactions", "label", nan, raw, alive, rows)
        check("label_out_of_range", "interactions", "label", ~np.isin(lab, (0.0, 1.0)), raw,
              alive, rows)
        out_cols["label"] = np.where(alive, np.nan_to_num(lab), 0).astype(np.int64)
    if "rating" in log.columns:
        raw = log["rating"].to_numpy(object)
        rating = pd.to_numeric(log["rating"], errors="coerce").to_numpy(float)
        nan = log["rating"].isna().to_numpy()
        has_label = "label" in log.columns
        check("nan_rating", "interactions", "rating", nan, raw, alive, rows, kept=has_label)
        bad = ~nan & ~(np.isfinite(rating) & (rating >= 0))
        check("rating_out_of_range", "interactions", "rating", bad, raw, alive, rows)
        rating = np.where(np.isfinite(rating), rating, 0.0)
        out_cols["rating"] = rating
        if not has_label:
            out_cols["label"] = (rating >= label_threshold).astype(np.int64)
    parsed = log.copy()
    for name, values in out_cols.items():
        parsed[name] = values
    dup = parsed.reset_index(drop=True)[alive].astype(object).duplicated().to_numpy()
    bad = np.zeros(n_log, bool)
    bad[np.flatnonzero(alive)[dup]] = True
    if bad.any():
        ex = [{"row": int(rows[i]), **{c: _jsonable(parsed[c].iloc[i]) for c in
                                       ("user_id", "item_id", "timestamp")}}
              for i in np.flatnonzero(bad)[:_MAX_EXAMPLES]]
        problems.append(Problem("duplicate_rows", "interactions", "all columns",
                                int(bad.sum()), fail_action, ex))
        alive &= ~bad
    known = set(item_items[ialive].tolist())
    check("unknown_item", "interactions", "item_id", [v not in known for v in log_items],
          log_items, alive, rows)

    report = DataReport({"interactions": n_log, "items": n_items},
                        {"interactions": int(alive.sum()), "items": int(ialive.sum())}, problems)
    if any(p.action == "failed" for p in problems):
        raise BadDataError(report)
    id_type = {True: np.int64, False: str}
    parsed = parsed[alive].reset_index(drop=True)
    parsed["user_id"] = parsed["user_id"].astype(id_type[user_int])
    parsed["item_id"] = parsed["item_id"].astype(id_type[item_int])
    parsed["timestamp"] = parsed["timestamp"].astype(np.int64)
    out_items = items.copy()
    out_items["item_id"] = item_items
    out_items["title"] = np.where(has_title, titles, "")
    out_items["has_title"] = has_title
    out_items = out_items[ialive].reset_index(drop=True)
    out_items["item_id"] = out_items["item_id"].astype(id_type[item_int])
    return parsed, out_items, report
