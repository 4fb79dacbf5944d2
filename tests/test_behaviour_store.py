"""The serving behaviour store gives, for every request, exactly training's features.

Every test runs on SQLite and on Redis; the Redis cases start a real `redis-server` on a free
loopback port (skipped if it is not on PATH).
"""

import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from em3_tf import interface as F
from em3_tf.behaviour_store import (RedisBehaviourStore, SQLiteBehaviourStore,
                                    fill_from_columns, history_features, open_store)
from em3_tf.data.splits import user_sequences

MAX_LEN = 5


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    directory = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    import redis
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        server.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    server.terminate()
    server.wait(10)


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """`make_store(db=0)` opens store `db` (0 or 1) of this test, empty at the test's start;
    calling it again reopens the same store."""
    opened = []
    if request.param == "redis":
        base = request.getfixturevalue("redis_url")[:-len("/0")]
        urls = [f"{base}/{db}" for db in (0, 1)]
        for url in urls:
            with RedisBehaviourStore(url) as store:
                store._redis.flushdb()
    else:
        urls = [str(tmp_path / f"events{db}.db") for db in (0, 1)]

    def make(db=0):
        store = open_store(urls[db])
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _log(seed, strings, users=25, items=40, rows=700):
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, users, rows), rng.integers(0, items, rows)
    return {F.USER_ID: np.array([f"u_{u:04d}" for u in user]) if strings else user,
            F.ITEM_ID: np.array([f"SKU-{i:05d}" for i in item]) if strings else item,
            "timestamp": rng.integers(1_000, 1_120, rows),  # many ties, rows not time-ordered
            F.LABEL: rng.integers(0, 2, rows),
            "rating": rng.integers(0, 6, rows)}


def _unpadded(sequences, row):
    length = min(int(sequences[F.USER_COUNT][row]), MAX_LEN)
    out = {name: sequences[name][row][:length] for name in F.SEQUENCES}
    out.update({name: sequences[name][row] for name in F.USER_STATISTICS})
    return out


def _assert_same(got, want, where=""):
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=f"{name} {where}")
        assert np.shape(got[name]) == np.shape(value), name
        assert np.asarray(got[name]).dtype.kind == np.asarray(value).dtype.kind, name


@pytest.mark.parametrize("strings", [False, True], ids=["int_ids", "string_ids"])
def test_every_row_gets_exactly_trainings_features(make_store, strings):
    log = _log(3 if strings else 4, strings)
    want = user_sequences(log[F.USER_ID], log[F.ITEM_ID], log["timestamp"], log[F.LABEL],
                          MAX_LEN, log["rating"])
    with make_store() as store:
        assert fill_from_columns(store, log) == len(log[F.LABEL])
        for row in range(len(log[F.LABEL])):
            user = log[F.USER_ID][row].item()
            got = store.features(user, at=int(log["timestamp"][row]), max_len=MAX_LEN)
            _assert_same(got, _unpadded(want, row), f"row {row}")
            if len(got[F.HISTORY]):
                assert isinstance(got[F.HISTORY][0], np.str_ if strings else np.int64)
        padded = store.features(user, at=int(log["timestamp"][row]), max_len=MAX_LEN,
                                padded=True)
        for name in want:
            np.testing.assert_array_equal(padded[name], want[name][row], err_msg=name)


def test_history_features_at_many_times_equals_one_at_a_time():
    rng = np.random.default_rng(0)
    times = np.sort(rng.integers(0, 30, 40))
    events = (rng.integers(0, 9, 40), rng.integers(0, 2, 40), rng.integers(0, 6, 40), times)
    many = history_features(*events, np.arange(-1, 33), 4)
    for k, at in enumerate(range(-1, 33)):
        _assert_same(history_features(*events, at, 4), {n: v[k] for n, v in many.items()})


def test_events_at_or_after_the_request_time_never_appear(make_store):
    with make_store() as store:
        store.append([7, 7, 7], [1, 2, 3], [1, 0, 1], [100, 200, 300], [5, 0, 4])
        before = store.features(7, at=300)
        store.append([7, 7, 7], [90, 91, 92], [1, 1, 1], [300, 300, 400], [1, 1, 1])
        after = store.features(7, at=300)
        _assert_same(after, before)
        assert after[F.HISTORY].tolist() == [2, 1]
        assert after[F.HISTORY_SECONDS].tolist() == [100, 200]
        assert (after[F.USER_COUNT], after[F.USER_POSITIVES]) == (2, 1)
        later = store.features(7, at=301)  # one second later they count (the test can fail)
        assert later[F.HISTORY].tolist() == [91, 90, 3, 2, 1]
        assert (later[F.USER_COUNT], later[F.USER_POSITIVES]) == (5, 4)
        assert store.features(7, at=301, max_len=2)[F.HISTORY].tolist() == [91, 90]
        assert store.features(7, at=301, max_len=2)[F.USER_COUNT] == 5
        store.append([7], [93], [0], [int(time.time()) - 5])
        store.append([7], [94], [0], [int(time.time()) + 1000])
        assert store.features(7)[F.HISTORY][0] == 93  # default `at`: now


@pytest.mark.parametrize("strings", [False, True], ids=["int_ids", "string_ids"])
def test_unknown_user_gets_empty_sequences_and_zero_counts(make_store, strings):
    with make_store() as store:
        store.append(["u_1"] if strings else [1], ["SKU-1"] if strings else [1], [1], [10])
        got = store.features("u_2" if strings else 2, at=100)
        assert all(len(got[name]) == 0 for name in F.SEQUENCES)
        assert (got[F.USER_COUNT], got[F.USER_POSITIVES]) == (0, 0)
        assert got[F.HISTORY].dtype.kind == ("U" if strings else "i")
    with make_store(db=1) as store:  # an empty store
        assert store.features(1, at=10)[F.USER_COUNT] == 0


def test_id_type_mismatch_is_refused_naming_the_feature(make_store):
    with make_store() as store:
        store.append(np.array([1, 2]), np.array(["SKU-1", "SKU-2"]), [1, 0], [10, 11])
        with pytest.raises(ValueError, match="user_id"):
            store.append(["u_1"], ["SKU-3"], [1], [12])
        with pytest.raises(ValueError, match="item_id"):
            store.append([1], [3], [1], [12])
        with pytest.raises(ValueError, match="user_id"):
            store.features("u_1", at=20)
        with pytest.raises(ValueError, match="timestamp"):
            store.append([1], ["SKU-3"], [1], [1.5])
        with pytest.raises(ValueError, match="label"):
            store.append([1, 2], ["SKU-3", "SKU-4"], [1], [12, 13])
        with pytest.raises(ValueError, match="at"):
            store.features(1, at="yesterday")
        assert store.features(2, at=20)[F.HISTORY].tolist() == ["SKU-2"]


@pytest.mark.parametrize("url", ["ftp://host/events", "postgres://db/x", "http://x:1/0", "",
                                 "sqlite://", "sqlite://b.db"])
def test_bad_url_is_refused_naming_it(url):
    with pytest.raises(ValueError, match=re.escape(repr(url))):
        open_store(url)


def test_urls_and_paths_open_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url, path in ((f"sqlite:///{tmp_path}/a.db", f"{tmp_path}/a.db"),  # sqlite:////abs
                      ("sqlite:///b.db", "b.db"), (str(tmp_path / "c.db"), str(tmp_path / "c.db"))):
        with open_store(url) as store:
            assert isinstance(store, SQLiteBehaviourStore) and store.path == path
            store.append([1], [2], [1], [3])
    assert (tmp_path / "b.db").exists()


def test_reopened_store_gives_the_same_features_and_keeps_its_id_types(make_store):
    log = _log(5, True, rows=200)
    with make_store() as store:
        fill_from_columns(store, log)
        want = [store.features(u, at=1_100) for u in ("u_0001", "u_0002")]
    with make_store() as store:  # reopened
        for user, features in zip(("u_0001", "u_0002"), want):
            _assert_same(store.features(user, at=1_100), features)
        with pytest.raises(ValueError, match="item_id"):
            store.append(["u_0001"], [17], [1], [5])


def test_sqlite_store_serves_threads(tmp_path):
    with SQLiteBehaviourStore(tmp_path / "t.db") as store:
        errors = []

        def work(k):
            try:
                for i in range(50):
                    store.append([k], [i], [1], [i])
                    store.features(k, at=i + 1)
            except Exception as error:  # noqa: BLE001  (reported below)
                errors.append(error)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert [store.features(k, at=1_000)[F.USER_COUNT] for k in range(4)] == [50] * 4


def test_the_store_imports_no_tensorflow():
    code = ("import sys, em3_tf.behaviour_store; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
