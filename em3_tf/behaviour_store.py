"""User behaviour at serving time: an event store whose features equal training's, exactly.

At serving time the ranking service has a user id and candidate items; the model needs the
user's behaviour sequence with feedback and running statistics (`em3_tf.interface`). Training
computes them with `history_features` (through `em3_tf.data.splits.user_sequences`); a store
computes them with the very same function, from the events it holds, for a request at time
`at`: only events strictly earlier than `at` count, most recent first, ties at equal timestamps
in insertion order (training's stable sort by time, when filled by `fill_from_columns`).

Backends: `SQLiteBehaviourStore` (embedded default; one `events` table indexed on
`(user_id, timestamp)`, `seq` = insertion order) and `RedisBehaviourStore` (per user a sorted
set `em3:events:<user>`, score = timestamp, members ordered by a zero-padded global sequence,
plus `em3:positives:<user>` for the running count of positives). Each reads only the last
`max_len` events before `at` plus two counts. The id type of `user_id` and `item_id` (int or
str) is fixed by the first append and persisted (`meta` table / `em3:meta` hash): reads give
back that type, appends of the other type are refused. No TensorFlow here: clients stay light.
"""

import abc
import threading
import time

import numpy as np

from em3_tf.interface import (FEEDBACK_SEQUENCES, HISTORY, HISTORY_LABELS, HISTORY_RATINGS,
                              HISTORY_SECONDS, ITEM_ID, LABEL, PAD_ID, SEQUENCES, USER_COUNT,
                              USER_ID, USER_POSITIVES, is_string, padding_of)

TIMESTAMP, RATING = "timestamp", "rating"


def history_features(items, labels, ratings, timestamps, at, max_len, prior_count=0,
                     prior_positives=0) -> dict:
    """Behaviour features of one user at request time(s) `at`: THE definition of training's.

    Args:
      items, labels, ratings, timestamps: `[n]` the user's events sorted by time ascending,
        ties in their original order. Only events with `timestamp < at` count.
      at: a request time (scalar) or `[m]` of them.
      prior_count, prior_positives: events (and positives) earlier than the given ones and
        than `at`, for callers that pass only a suffix of the past (0: the whole past).
    Returns:
      `{history_item_ids, history_labels, history_ratings, history_seconds_ago}` `[max_len]`
      (`[m, max_len]` for `[m]` times), most recent first, padded with `PAD_ID` (history items
      of string ids: `PAD_STRING`, in the items' dtype); `{user_prior_count,
      user_prior_positives}` int64 `[]` (`[m]`).
    """
    items = np.asarray(items)
    labels, ratings, timestamps = (np.asarray(v) for v in (labels, ratings, timestamps))
    for name, value in (("items", items), ("labels", labels), ("ratings", ratings)):
        if value.shape != timestamps.shape or value.ndim != 1:
            raise ValueError(f"`{name}` must be 1-D like `timestamps` {timestamps.shape}, "
                             f"got shape {value.shape}.")
    max_len = _positive("max_len", max_len)
    if np.any(timestamps[1:] < timestamps[:-1]):
        raise ValueError("`timestamps` must be sorted ascending.")
    times = np.asarray(at)
    first = np.searchsorted(timestamps, times.reshape(-1), side="left")  # strictly earlier
    positives = np.concatenate([[0], np.cumsum(labels > 0)])[first]
    index = first[:, None] - 1 - np.arange(max_len)  # newest first
    valid = index >= 0
    picked = index[valid]
    out = {name: np.full(index.shape, PAD_ID, np.int64) for name in FEEDBACK_SEQUENCES}
    out[HISTORY] = np.full(index.shape, padding_of(items),
                           items.dtype if is_string(items) else np.int64)
    out[HISTORY][valid] = items[picked]
    out[HISTORY_LABELS][valid] = labels[picked]
    out[HISTORY_RATINGS][valid] = ratings[picked]
    out[HISTORY_SECONDS][valid] = (np.broadcast_to(times.reshape(-1, 1), index.shape)[valid]
                                   - timestamps[picked])
    out[USER_COUNT] = first.astype(np.int64) + prior_count
    out[USER_POSITIVES] = positives + prior_positives
    return {k: v[0] for k, v in out.items()} if times.ndim == 0 else out


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _id_kind(name, values):
    """`("int" | "str", python list)` of an id column; ValueError naming `name` otherwise."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D ids, got shape {values.shape}.")
    listed = values.tolist()
    if values.dtype.kind in "iu" or all(type(v) is int for v in listed):
        return "int", [int(v) for v in listed]
    if all(isinstance(v, (str, bytes)) for v in listed):
        return "str", [v.decode() if isinstance(v, bytes) else str(v) for v in listed]
    raise ValueError(f"`{name}` must hold int or str ids, got {values.dtype}: "
                     f"{values[:3].tolist()}.")


def _integers(name, values, n):
    values = np.asarray(values)
    if values.shape != (n,) or values.dtype.kind not in "biu":
        raise ValueError(f"`{name}` must be {n} integers, got {values.dtype} of shape "
                         f"{values.shape}.")
    return values.astype(np.int64).tolist()


class BehaviourStore(abc.ABC):
    """Append-only store of interaction events; `features` gives a request's model inputs."""

    _fixed_types = None  # the id types, cached once both are set (they never change)

    def _types(self) -> dict:
        types = self._fixed_types or self._id_types()
        self._fixed_types = types if len(types) == 2 else None
        return types

    def append(self, user_ids, item_ids, labels, timestamps, ratings=None) -> int:
        """Appends events: `[n]` ids (int or str, as the store's), integer labels (1 positive),
        integer timestamps (seconds) and ratings (default 0 = none). Returns `n`."""
        user_kind, users = _id_kind(USER_ID, user_ids)
        item_kind, items = _id_kind(ITEM_ID, item_ids)
        n = len(users)
        if len(items) != n:
            raise ValueError(f"`{ITEM_ID}` must have {n} ids like `{USER_ID}`, got {len(items)}.")
        labels, times = _integers(LABEL, labels, n), _integers(TIMESTAMP, timestamps, n)
        ratings = [0] * n if ratings is None else _integers(RATING, ratings, n)
        if n == 0:
            return 0
        stored = self._types()
        for name, kind in ((USER_ID, user_kind), (ITEM_ID, item_kind)):
            if stored.get(name, kind) != kind:
                raise ValueError(f"`{name}` ids are {kind} but this store holds {stored[name]} "
                                 f"ids (first: {(users if name == USER_ID else items)[0]!r}).")
        self._write({USER_ID: user_kind, ITEM_ID: item_kind}, users, items, labels, ratings, times)
        return n

    def features(self, user_id, at=None, max_len=50, padded=False) -> dict:
        """The model's behaviour features of `user_id` for a request at time `at` (int seconds,
        default now): `history_features` of the user's events. Sequences are `[<= max_len]`,
        padding removed (what the client sends), or `[max_len]` padded if `padded`; statistics
        int64 `[]`. An unknown user has empty sequences and zero counts."""
        at = int(time.time()) if at is None else at
        if isinstance(at, bool) or not isinstance(at, (int, np.integer)):
            raise ValueError(f"`at` must be an integer timestamp (seconds), got {at!r}.")
        max_len, stored = _positive("max_len", max_len), self._types()
        kind, (user,) = _id_kind(USER_ID, [user_id])
        if stored.get(USER_ID, kind) != kind:
            raise ValueError(f"`{USER_ID}` {user_id!r} is {kind} but this store holds "
                             f"{stored[USER_ID]} ids.")
        items, labels, ratings, times, count, positives = self._read(user, int(at), max_len)
        items = (np.array(items, str) if stored.get(ITEM_ID) == "str"
                 else np.array([int(i) for i in items], np.int64))
        out = history_features(items, np.array(labels, np.int64), np.array(ratings, np.int64),
                               np.array(times, np.int64), int(at), max_len,
                               count - len(items), positives - sum(x > 0 for x in labels))
        if not padded:
            out.update({name: out[name][:len(items)] for name in SEQUENCES})
        return out

    def id_type(self, name: str = USER_ID):
        """`"int"` or `"str"`: the type of the store's `name` ids (None while empty)."""
        return self._types().get(name)

    @abc.abstractmethod
    def _id_types(self) -> dict:
        """`{user_id|item_id: "int"|"str"}` persisted by the first append (empty before)."""

    @abc.abstractmethod
    def _write(self, kinds, users, items, labels, ratings, times):
        """Stores validated events (lists) and the id `kinds` unless already stored."""

    @abc.abstractmethod
    def _read(self, user, at, max_len):
        """`(items, labels, ratings, timestamps, count, positives)`: the last `max_len` events
        before `at`, oldest first, and the count and positives of all events before `at`."""

    @abc.abstractmethod
    def close(self):
        """Releases the connection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SQLiteBehaviourStore(BehaviourStore):
    """The embedded store: one SQLite file (WAL), safe to share between a server's threads."""

    def __init__(self, path):
        import sqlite3
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.executescript(  # ids untyped: each keeps its int or str as appended
            "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, "
            "value TEXT); CREATE TABLE IF NOT EXISTS events(user_id NOT NULL, item_id NOT NULL, "
            "label INTEGER NOT NULL, rating INTEGER NOT NULL, timestamp INTEGER NOT NULL, "
            "seq INTEGER PRIMARY KEY); CREATE INDEX IF NOT EXISTS events_user_time "
            "ON events(user_id, timestamp);")

    def _id_types(self):
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def _write(self, kinds, users, items, labels, ratings, times):
        with self._lock, self._db:  # one transaction
            self._db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", kinds.items())
            self._db.executemany("INSERT INTO events(user_id, item_id, label, rating, timestamp)"
                                 " VALUES (?, ?, ?, ?, ?)",
                                 zip(users, items, labels, ratings, times))

    def _read(self, user, at, max_len):
        with self._lock, self._db:  # one read transaction: one snapshot for both queries
            self._db.execute("BEGIN")
            rows = self._db.execute(
                "SELECT item_id, label, rating, timestamp FROM events WHERE user_id = ? AND "
                "timestamp < ? ORDER BY timestamp DESC, seq DESC LIMIT ?",
                (user, at, max_len)).fetchall()[::-1]
            count, positives = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(label > 0), 0) FROM events WHERE user_id = ? "
                "AND timestamp < ?", (user, at)).fetchone()
        return (*([list(c) for c in zip(*rows)] or [[]] * 4), count, positives)

    def close(self):
        with self._lock:
            self._db.close()


class RedisBehaviourStore(BehaviourStore):
    """Events in Redis sorted sets (see the module docstring); needs the `redis` package."""

    def __init__(self, url, prefix="em3"):
        import redis  # optional dependency, only for this backend
        self.url, self.prefix = url, prefix
        self._redis = redis.Redis.from_url(url)

    def _key(self, kind, user):
        return f"{self.prefix}:{kind}:{user}"

    def _id_types(self):
        return {k.decode(): v.decode()
                for k, v in self._redis.hgetall(f"{self.prefix}:meta").items()}

    def _write(self, kinds, users, items, labels, ratings, times):
        if max(map(abs, times)) >= 2 ** 53:  # scores are doubles: keep timestamps exact
            raise ValueError(f"`{TIMESTAMP}` must be below 2**53 in Redis, got {max(times)}.")
        last = self._redis.incrby(f"{self.prefix}:seq", len(users))
        events, positives = {}, {}
        for seq, user, item, label, rating, t in zip(range(last - len(users) + 1, last + 1),
                                                     users, items, labels, ratings, times):
            events.setdefault(user, {})[f"{seq:020d}|{label}|{rating}|{item}"] = t
            if label > 0:
                positives.setdefault(user, {})[f"{seq:020d}"] = t
        pipe = self._redis.pipeline()
        for name, kind in kinds.items():
            pipe.hsetnx(f"{self.prefix}:meta", name, kind)
        for kind, mapping in (("events", events), ("positives", positives)):
            for user, members in mapping.items():
                pipe.zadd(self._key(kind, user), members)
        pipe.execute()

    def _read(self, user, at, max_len):
        pipe = self._redis.pipeline()  # MULTI/EXEC: one consistent snapshot
        pipe.zrevrangebyscore(self._key("events", user), f"({at}", "-inf", 0, max_len, True)
        pipe.zcount(self._key("events", user), "-inf", f"({at}")
        pipe.zcount(self._key("positives", user), "-inf", f"({at}")
        members, count, positives = pipe.execute()
        events = [(*m.decode().split("|", 3)[1:], t) for m, t in members[::-1]]  # seq|l|r|item
        labels, ratings, items, times = zip(*events) if events else [()] * 4
        return (list(items), [*map(int, labels)], [*map(int, ratings)], [*map(int, times)],
                count, positives)

    def close(self):
        self._redis.close()


def open_store(url) -> BehaviourStore:
    """SQLite for `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` (SQLAlchemy's
    convention) or a plain file path; Redis for `redis://host:port/db` (or `rediss://`)."""
    url = str(url)
    if url.startswith(("redis://", "rediss://")):
        return RedisBehaviourStore(url)
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
    if "://" in path or not path:
        raise ValueError(f"Unsupported behaviour store url {url!r}: use sqlite:///relative.db, "
                         f"sqlite:////absolute.db, a file path or redis://host:port/db.")
    return SQLiteBehaviourStore(path)


def fill_from_columns(store, columns, batch_size=50_000) -> int:
    """Appends a data build's events (`{user_id, item_id, label, timestamp[, rating]}` `[n]`
    arrays) in stable time order, so ties keep their row order as in training. Returns `n`."""
    for name in (USER_ID, ITEM_ID, LABEL, TIMESTAMP):
        if name not in columns:
            raise ValueError(f"Column '{name}' is missing, got {sorted(columns)}.")
    order = np.argsort(np.asarray(columns[TIMESTAMP]), kind="stable")
    names = (USER_ID, ITEM_ID, LABEL, TIMESTAMP, RATING)
    cols = {n: np.asarray(columns[n])[order] for n in names if columns.get(n) is not None}
    for start in range(0, len(order), batch_size):
        part = {n: v[start:start + batch_size] for n, v in cols.items()}
        store.append(part[USER_ID], part[ITEM_ID], part[LABEL], part[TIMESTAMP],
                     part.get(RATING))
    return len(order)
