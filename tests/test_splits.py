import numpy as np
import pytest

from em3_tf import features as F
from em3_tf.data.splits import held_out_items, make_splits, user_sequences


def _interactions(seed=0, users=30, items=50, rows=900):
    rng = np.random.default_rng(seed)
    return {F.USER_ID: rng.integers(1, users + 1, rows),
            F.ITEM_ID: rng.integers(1, items + 1, rows),
            "timestamp": rng.integers(0, 300, rows),  # many ties on purpose
            F.LABEL: rng.integers(0, 2, rows),
            "rating": rng.integers(1, 6, rows)}


def _sequences(cols, max_len=8):
    return user_sequences(cols[F.USER_ID], cols[F.ITEM_ID], cols["timestamp"], cols[F.LABEL],
                          max_len, cols["rating"])


def test_history_is_strictly_before_most_recent_first_with_its_feedback():
    cols = _interactions()
    seq = _sequences(cols)
    for row in range(len(cols[F.USER_ID])):
        u, t = cols[F.USER_ID][row], cols["timestamp"][row]
        earlier = [k for k in range(len(cols[F.USER_ID]))
                   if cols[F.USER_ID][k] == u and cols["timestamp"][k] < t]
        assert seq[F.USER_COUNT][row] == len(earlier)
        assert seq[F.USER_POSITIVES][row] == sum(cols[F.LABEL][k] for k in earlier)
        length = int((seq[F.HISTORY][row] != F.PAD_ID).sum())
        assert length == min(8, len(earlier))
        ago = seq[F.HISTORY_SECONDS][row][:length]
        assert np.all(ago > 0) and np.all(np.diff(ago) >= 0)  # strictly earlier, newest first
        events = {(cols[F.ITEM_ID][k], cols[F.LABEL][k], cols["rating"][k],
                   t - cols["timestamp"][k]) for k in earlier}
        for entry in zip(*(seq[name][row][:length] for name in F.SEQUENCES)):
            assert tuple(entry) in events  # each entry is one real earlier event, aligned


def test_planted_feedback_of_the_example_and_later_rows_never_reaches_its_features():
    """Flip the label and rating of one example and of every later row: the features of that
    example (and of every row at or before its time) must not change at all."""
    cols = _interactions(2)
    before = _sequences(cols)
    order = np.argsort(cols["timestamp"], kind="stable")
    for target in order[[100, 450, 800]]:
        t = cols["timestamp"][target]
        planted = {k: v.copy() for k, v in cols.items()}
        later = planted["timestamp"] >= t
        planted[F.LABEL][later] = 1 - planted[F.LABEL][later]
        planted["rating"][later] = 6 - planted["rating"][later]
        after = _sequences(planted)
        unaffected = cols["timestamp"] <= t
        for name, value in before.items():
            np.testing.assert_array_equal(value[unaffected], after[name][unaffected],
                                          err_msg=name)
        # ... while later rows do see the change (the test can fail)
        changed = np.any(before[F.HISTORY_LABELS][~unaffected]
                         != after[F.HISTORY_LABELS][~unaffected])
        assert changed or not (~unaffected).any()


@pytest.mark.parametrize("protocol", ["temporal", "item_cold"])
def test_time_order_holds_for_every_row_of_every_split(protocol):
    cols = _interactions(1)
    splits = make_splits(cols, np.arange(1, 51), protocol=protocol, cold_fraction=0.2, seed=0,
                         max_len=6)
    train, evaluation, test = (splits[s] for s in ("train", "eval", "test"))
    assert train["timestamp"].max() < evaluation["timestamp"].min()
    assert evaluation["timestamp"].max() < test["timestamp"].min()
    t_eval = evaluation["timestamp"].min()
    window = cols["timestamp"] >= t_eval
    # eval and test hold every row of their time windows, warm and cold
    assert len(evaluation[F.ITEM_ID]) + len(test[F.ITEM_ID]) == window.sum()
    held = held_out_items(np.arange(1, 51), 0.2, 0)
    if protocol == "item_cold":
        assert not np.isin(train[F.ITEM_ID], held).any()
        assert not np.isin(train[F.HISTORY], held).any()
        dropped = (~window & np.isin(cols[F.ITEM_ID], held)).sum()
        assert dropped > 0 and len(train[F.ITEM_ID]) == (~window).sum() - dropped
        assert test["is_cold_item"][np.isin(test[F.ITEM_ID], held)].all()
        # a held-out item's dropped rows never enter any history, not even eval/test ones:
        # held-out entries of a history all happened inside the eval/test window
        for part in (evaluation, test):
            held_entry = np.isin(part[F.HISTORY], held)
            entry_time = part["timestamp"][:, None] - part[F.HISTORY_SECONDS]
            assert held_entry.any() and np.all(entry_time[held_entry] >= t_eval)
    else:
        assert len(train[F.ITEM_ID]) == (~window).sum()
    assert set(np.unique(test[F.USER_ID][test["is_new_user"]])).isdisjoint(train[F.USER_ID])


def test_bad_arguments():
    cols = _interactions()
    with pytest.raises(ValueError, match="protocol"):
        make_splits(cols, np.arange(1, 51), protocol="random")
    with pytest.raises(ValueError, match="fractions"):
        make_splits(cols, np.arange(1, 51), fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="'timestamp'"):
        make_splits({k: v for k, v in cols.items() if k != "timestamp"}, np.arange(1, 51))
