"""`RankingData.dataset`: the index pipeline gives the batches of the per-example one."""

import numpy as np
import pytest

from em3_tf import features as F
from em3_tf._tf import tf


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_equal_the_per_example_pipelines(small_data, shuffle):
    """Shuffling row indices and gathering each batch must give, batch for batch and over
    two epochs (a reshuffle), what shuffling and batching the examples one by one gives with
    the same seeds; the last batch is the short remainder."""
    features = small_data.model_features("train")
    n = len(features[F.ITEM_ID])
    batch_size = 7
    assert n % batch_size, "the data must leave a short last batch"
    tf.keras.utils.set_random_seed(0)
    reference = tf.data.Dataset.from_tensor_slices(features)
    if shuffle:
        reference = reference.shuffle(n, seed=3, reshuffle_each_iteration=True)
    reference = list(reference.batch(batch_size).repeat(2))
    tf.keras.utils.set_random_seed(0)
    batches = list(small_data.dataset("train", batch_size, shuffle=shuffle, seed=3).repeat(2))
    assert len(batches) == len(reference) == 2 * -(-n // batch_size)
    for got, want in zip(batches, reference):
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(got[name].numpy(), want[name].numpy(), err_msg=name)
    if shuffle:  # the two epochs are different orders
        first = np.concatenate([b[F.ITEM_ID].numpy() for b in batches[:len(batches) // 2]])
        second = np.concatenate([b[F.ITEM_ID].numpy() for b in batches[len(batches) // 2:]])
        assert not np.array_equal(first, second)


def test_without_label(small_data):
    batch = next(iter(small_data.dataset("eval", 5, with_label=False)))
    assert F.LABEL not in batch and batch[F.ITEM_ID].shape == [5]
    assert batch[F.HISTORY].shape == [5, small_data.splits["eval"][F.HISTORY].shape[1]]
