"""Train/eval/test splits and behaviour sequences, shared by every data source.

Two protocols:
  - `temporal`: one global time cut, train / eval / test = `fractions` of the rows by time.
  - `item_cold`: a seeded random `cold_fraction` of the catalog is held out entirely; all
    interactions of held-out items go to eval and test (half each, by time); the rest follows
    the temporal cut. Cold-start quality is reported on this protocol.

Behaviour sequences hold the user's earlier items, strictly before the example's timestamp,
most recent first, and never an item held out by `item_cold` (so no held-out item reaches a
training example, not even through a history).
"""

from typing import Dict

import numpy as np

from em3_tf.features import HISTORY, ITEM_ID, PAD_ID, USER_ID

SPLITS = ("train", "eval", "test")
PROTOCOLS = ("temporal", "item_cold")
TIMESTAMP = "timestamp"
IS_COLD = "is_cold_item"


def held_out_items(catalog_item_ids, cold_fraction, seed) -> np.ndarray:
    """A seeded random `cold_fraction` of `catalog_item_ids`, sorted."""
    if not 0.0 < cold_fraction < 1.0:
        raise ValueError(f"`cold_fraction` must be in (0, 1), got {cold_fraction!r}.")
    ids = np.unique(np.asarray(catalog_item_ids, np.int64))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ids, size=int(round(cold_fraction * len(ids))), replace=False))


def _time_order(timestamps):
    return np.argsort(timestamps, kind="stable")


def assign_splits(timestamps, items, held_out, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Split index (0 train, 1 eval, 2 test) of every row; see the module docstring."""
    fractions = np.asarray(fractions, float)
    if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"`fractions` must be three non-negative numbers summing to 1, "
                         f"got {fractions.tolist()}.")
    timestamps = np.asarray(timestamps)
    cold = np.isin(items, held_out)
    split = np.empty(len(timestamps), np.int8)
    warm_rows = np.flatnonzero(~cold)
    order = warm_rows[_time_order(timestamps[warm_rows])]
    cuts = np.round(np.cumsum(fractions)[:2] * len(order)).astype(int)
    split[order[:cuts[0]]], split[order[cuts[0]:cuts[1]]], split[order[cuts[1]:]] = 0, 1, 2
    cold_rows = np.flatnonzero(cold)
    order = cold_rows[_time_order(timestamps[cold_rows])]
    half = len(order) // 2
    split[order[:half]], split[order[half:]] = 1, 2
    return split


def user_histories(users, items, timestamps, max_len, exclude_items=()) -> np.ndarray:
    """`[N, max_len]` int64: each row's user's items strictly before its timestamp.

    Most recent first, `PAD_ID` padded; `exclude_items` never appear.
    """
    users, items, timestamps = map(np.asarray, (users, items, timestamps))
    out = np.full((len(users), max_len), PAD_ID, np.int64)
    excluded = np.isin(items, np.asarray(list(exclude_items), np.int64))
    order = np.lexsort((timestamps, users))
    start = 0
    while start < len(order):
        end = start
        user = users[order[start]]
        while end < len(order) and users[order[end]] == user:
            end += 1
        seen = []  # (timestamp, item) of this user's usable interactions, in time order
        k = start
        while k < end:
            t = timestamps[order[k]]
            group_end = k
            while group_end < end and timestamps[order[group_end]] == t:
                group_end += 1
            recent = [item for _, item in seen[-max_len:]][::-1]
            for row in order[k:group_end]:
                out[row, :len(recent)] = recent
            for row in order[k:group_end]:
                if not excluded[row]:
                    seen.append((t, items[row]))
            k = group_end
        start = end
    return out


def make_splits(columns: Dict[str, np.ndarray], catalog_item_ids, protocol="temporal",
                fractions=(0.8, 0.1, 0.1), cold_fraction=0.2, seed=0, max_len=50,
                ) -> Dict[str, Dict[str, np.ndarray]]:
    """Splits interaction rows into train/eval/test feature arrays with histories.

    Args:
      columns: equal-length arrays with at least `user_id`, `item_id`, `timestamp` and the
        label; every other column is carried through.
      catalog_item_ids: all item ids of the catalog (the population `item_cold` samples from).
      protocol: `"temporal"` or `"item_cold"`.

    Returns:
      `{split: {column: array}}` with `history_item_ids [n, max_len]` and `is_cold_item`
      (the item has no training interaction) added.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {PROTOCOLS}, got {protocol!r}.")
    for name in (USER_ID, ITEM_ID, TIMESTAMP):
        if name not in columns:
            raise ValueError(f"Interaction column '{name}' is missing.")
    held_out = (held_out_items(catalog_item_ids, cold_fraction, seed) if protocol == "item_cold"
                else np.zeros([0], np.int64))
    items = np.asarray(columns[ITEM_ID], np.int64)
    split = assign_splits(columns[TIMESTAMP], items, held_out, fractions)
    history = user_histories(columns[USER_ID], items, columns[TIMESTAMP], max_len, held_out)
    train_items = np.unique(items[split == 0])
    out = {}
    for index, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == index)
        rows = rows[_time_order(np.asarray(columns[TIMESTAMP])[rows])]
        part = {key: np.asarray(value)[rows] for key, value in columns.items()}
        part[HISTORY] = history[rows]
        part[IS_COLD] = ~np.isin(part[ITEM_ID], train_items)
        out[name] = part
    return out


def summarize(splits: Dict[str, Dict[str, np.ndarray]], label: str) -> Dict[str, Dict[str, float]]:
    """Counts per split: examples, users, items, positive rate, cold items and rows."""
    summary = {}
    for name, part in splits.items():
        cold = part[IS_COLD]
        summary[name] = {
            "examples": int(len(part[ITEM_ID])),
            "users": int(len(np.unique(part[USER_ID]))),
            "items": int(len(np.unique(part[ITEM_ID]))),
            "positive_rate": round(float(np.mean(part[label])) if len(cold) else 0.0, 4),
            "cold_items": int(len(np.unique(part[ITEM_ID][cold]))),
            "cold_item_rows": int(cold.sum()),
            "rows_with_empty_history": int((part[HISTORY][:, 0] == PAD_ID).sum()),
        }
    return summary

