import numpy as np
import pytest

from em3_tf import features as F
from em3_tf.data.splits import make_splits, user_histories


def _interactions(seed=0, users=30, items=50, rows=900):
    rng = np.random.default_rng(seed)
    return {F.USER_ID: rng.integers(1, users + 1, rows),
            F.ITEM_ID: rng.integers(1, items + 1, rows),
            "timestamp": rng.integers(0, 300, rows),  # many ties on purpose
            F.LABEL: rng.integers(0, 2, rows)}


def test_history_is_strictly_before_and_most_recent_first():
    cols = _interactions()
    history = user_histories(cols[F.USER_ID], cols[F.ITEM_ID], cols["timestamp"], 8)
    when = {}
    for u, i, t in zip(cols[F.USER_ID], cols[F.ITEM_ID], cols["timestamp"]):
        when.setdefault((u, i), []).append(t)
    for row in range(len(history)):
        u, t = cols[F.USER_ID][row], cols["timestamp"][row]
        items = [i for i in history[row] if i != F.PAD_ID]
        earlier = sorted((s, i) for (uu, i), ts in when.items() if uu == u for s in ts if s < t)
        assert len(items) == min(8, len(earlier))
        expected_times = [s for s, _ in earlier][::-1][:len(items)]
        # every listed item has an interaction by this user at the listed (strictly earlier) time
        for item, s in zip(items, expected_times):
            assert s in when[(u, item)] and s < t


@pytest.mark.parametrize("protocol", ["temporal", "item_cold"])
def test_no_future_and_no_cold_item_in_training(protocol):
    cols = _interactions(1)
    splits = make_splits(cols, np.arange(1, 51), protocol=protocol, cold_fraction=0.2, seed=0,
                         max_len=6)
    assert sum(len(p[F.ITEM_ID]) for p in splits.values()) == 900
    train = splits["train"]
    cold_test = np.unique(splits["test"][F.ITEM_ID][splits["test"]["is_cold_item"]])
    assert not np.isin(train[F.ITEM_ID], cold_test).any()
    assert not np.isin(train[F.HISTORY], cold_test).any()
    if protocol == "item_cold":
        assert len(cold_test) > 0
        assert not np.isin(splits["test"][F.HISTORY], cold_test).any()
    else:
        warm_test = splits["test"]["timestamp"]
        assert train["timestamp"].max() <= warm_test.min()


def test_bad_arguments():
    cols = _interactions()
    with pytest.raises(ValueError, match="protocol"):
        make_splits(cols, np.arange(1, 51), protocol="random")
    with pytest.raises(ValueError, match="fractions"):
        make_splits(cols, np.arange(1, 51), fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="'timestamp'"):
        make_splits({k: v for k, v in cols.items() if k != "timestamp"}, np.arange(1, 51))
