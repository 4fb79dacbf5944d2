"""Train/eval/test splits and feedback-aware behaviour sequences, shared by every data source.

Both protocols cut the log by time, once, for every row:

  - train: `timestamp < t_eval`; eval: `t_eval <= timestamp < t_test`; test: `timestamp >=
    t_test`, where the cut times are the `fractions` quantiles of all rows' timestamps. No
    eval or test row precedes a training row.
  - `temporal`: exactly that.
  - `item_cold`: the same cuts, plus a seeded random `cold_fraction` of the catalog held out.
    Held-out items' rows before `t_eval` are dropped: they are neither training examples nor
    entries of any history. Eval and test keep every row of their time window, warm or cold.

Behaviour sequences (`user_sequences`): for each row, the user's earlier interactions, strictly
before the row's timestamp (an interaction at the same timestamp is not earlier), most recent
first, each with its feedback: the label, the rating (0 where the data has none) and the seconds
between it and the row. Beside them, the user's running statistics over the whole past: the
number of earlier interactions and how many were positive.

Slices reported everywhere: `is_cold_item` (the item has no training row), `is_new_user` (the
user has no training row).
"""

from typing import Dict

import numpy as np

from em3_tf import features as F

SPLITS = ("train", "eval", "test")
PROTOCOLS = ("temporal", "item_cold")
TIMESTAMP = "timestamp"
RATING = "rating"
IS_COLD = "is_cold_item"
IS_NEW_USER = "is_new_user"
DROPPED = -1


def held_out_items(catalog_item_ids, cold_fraction, seed) -> np.ndarray:
    """A seeded random `cold_fraction` of `catalog_item_ids`, sorted."""
    if not 0.0 < cold_fraction < 1.0:
        raise ValueError(f"`cold_fraction` must be in (0, 1), got {cold_fraction!r}.")
    ids = np.unique(np.asarray(catalog_item_ids))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ids, size=int(round(cold_fraction * len(ids))), replace=False))


def _time_order(timestamps):
    return np.argsort(timestamps, kind="stable")


def time_cuts(timestamps, fractions=(0.8, 0.1, 0.1)):
    """`(t_eval, t_test)`: the timestamps at the train and train+eval quantiles of the rows."""
    fractions = np.asarray(fractions, float)
    if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"`fractions` must be three non-negative numbers summing to 1, "
                         f"got {fractions.tolist()}.")
    ordered = np.sort(np.asarray(timestamps))
    positions = np.minimum(np.round(np.cumsum(fractions)[:2] * len(ordered)).astype(int),
                           len(ordered) - 1)
    return ordered[positions[0]], ordered[positions[1]]


def assign_splits(timestamps, items, held_out, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Split index of every row: 0 train, 1 eval, 2 test, `DROPPED` (-1) for held-out items'
    rows before the eval cut; see the module docstring."""
    timestamps = np.asarray(timestamps)
    t_eval, t_test = time_cuts(timestamps, fractions)
    split = np.where(timestamps < t_eval, 0, np.where(timestamps < t_test, 1, 2)).astype(np.int8)
    split[(split == 0) & np.isin(items, held_out)] = DROPPED
    return split


def user_sequences(users, items, timestamps, labels, max_len, ratings=None
                   ) -> Dict[str, np.ndarray]:
    """Each row's behaviour sequences and running statistics (see the module docstring).

    Computed per user by `em3_tf.behaviour_store.history_features`, the function the serving
    store uses too (it lives there as it must import no TensorFlow), at each row's timestamp.

    Returns:
      `{history_item_ids, history_labels, history_ratings, history_seconds_ago}` `[N, max_len]`
      (most recent first; int64 `PAD_ID` padded, but the history items of string ids, which
      are `PAD_STRING` padded) and `{user_prior_count, user_prior_positives}` int64 `[N]`.
    """
    from em3_tf.behaviour_store import history_features
    users, items, timestamps, labels = map(np.asarray, (users, items, timestamps, labels))
    ratings = np.zeros(len(users), np.int64) if ratings is None else np.asarray(ratings)
    n = len(users)
    out = {name: np.full((n, max_len), F.PAD_ID, np.int64) for name in F.FEEDBACK_SEQUENCES}
    out[F.HISTORY] = np.full((n, max_len), F.padding_of(items),
                             items.dtype if F.is_string(items) else np.int64)
    out[F.USER_COUNT] = np.zeros(n, np.int64)
    out[F.USER_POSITIVES] = np.zeros(n, np.int64)
    order = np.lexsort((timestamps, users))  # stable: ties keep their row order
    ordered = users[order]
    bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    for rows in np.split(order, bounds):
        times = timestamps[rows]
        features = history_features(items[rows], labels[rows], ratings[rows], times, times,
                                    max_len)
        for name, value in features.items():
            out[name][rows] = value
    return out


def make_splits(columns: Dict[str, np.ndarray], catalog_item_ids, protocol="temporal",
                fractions=(0.8, 0.1, 0.1), cold_fraction=0.2, seed=0, max_len=50,
                ) -> Dict[str, Dict[str, np.ndarray]]:
    """Splits interaction rows into train/eval/test feature arrays with behaviour sequences.

    Args:
      columns: equal-length arrays with at least `user_id`, `item_id`, `timestamp` and
        `label`, and optionally an integer `rating`; every other column is carried through.
      catalog_item_ids: all item ids of the catalog (the population `item_cold` samples from).
      protocol: `"temporal"` or `"item_cold"`.

    Returns:
      `{split: {column: array}}`, rows in time order, with the sequences and statistics of
      `user_sequences`, `is_cold_item` and `is_new_user` added.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {PROTOCOLS}, got {protocol!r}.")
    for name in (F.USER_ID, F.ITEM_ID, TIMESTAMP, F.LABEL):
        if name not in columns:
            raise ValueError(f"Interaction column '{name}' is missing.")
    held_out = (held_out_items(catalog_item_ids, cold_fraction, seed) if protocol == "item_cold"
                else [])
    items = np.asarray(columns[F.ITEM_ID])
    split = assign_splits(columns[TIMESTAMP], items, held_out, fractions)
    kept = np.flatnonzero(split != DROPPED)
    columns = {key: np.asarray(value)[kept] for key, value in columns.items()}
    split = split[kept]
    sequences = user_sequences(columns[F.USER_ID], columns[F.ITEM_ID], columns[TIMESTAMP],
                               columns[F.LABEL], max_len, columns.get(RATING))
    train_items = np.unique(columns[F.ITEM_ID][split == 0])
    train_users = np.unique(columns[F.USER_ID][split == 0])
    out = {}
    for index, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == index)
        rows = rows[_time_order(columns[TIMESTAMP][rows])]
        part = {key: value[rows] for key, value in columns.items()}
        part.update({key: value[rows] for key, value in sequences.items()})
        part[IS_COLD] = ~np.isin(part[F.ITEM_ID], train_items)
        part[IS_NEW_USER] = ~np.isin(part[F.USER_ID], train_users)
        out[name] = part
    return out


def summarize(splits: Dict[str, Dict[str, np.ndarray]], label: str) -> Dict[str, Dict[str, float]]:
    """Counts per split: examples, users, items, positive rate, cold items and rows, new users."""
    summary = {}
    for name, part in splits.items():
        cold = part[IS_COLD]
        summary[name] = {
            "examples": int(len(part[F.ITEM_ID])),
            "users": int(len(np.unique(part[F.USER_ID]))),
            "items": int(len(np.unique(part[F.ITEM_ID]))),
            "positive_rate": round(float(np.mean(part[label])) if len(cold) else 0.0, 4),
            "cold_items": int(len(np.unique(part[F.ITEM_ID][cold]))),
            "cold_item_rows": int(cold.sum()),
            "new_user_rows": int(part[IS_NEW_USER].sum()),
            "rows_with_empty_history": int(
                (part[F.HISTORY][:, 0] == F.padding_of(part[F.HISTORY])).sum()),
            "first_timestamp": int(part[TIMESTAMP].min()) if len(cold) else None,
            "last_timestamp": int(part[TIMESTAMP].max()) if len(cold) else None,
        }
    return summary
