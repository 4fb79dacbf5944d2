"""`TargetAttention`: the factored first layer equals DIN's concatenated form."""

import numpy as np
import pytest

from em3_tf._tf import tf
from em3_tf.layers.target_attention import TargetAttention


def test_factored_scores_equal_the_concatenated_din_formula():
    tf.keras.utils.set_random_seed(0)
    layer = TargetAttention(hidden_units=(8, 4))
    rng = np.random.default_rng(0)
    target = tf.constant(rng.normal(size=[3, 5]), tf.float32)
    history = tf.constant(rng.normal(size=[3, 6, 5]), tf.float32)
    mask = tf.constant(rng.random([3, 6]) < 0.7)
    pooled = layer(target, history, mask).numpy()
    # DIN as written: score MLP over [t, h, t - h, t * h], masked softmax, weighted sum
    tiled = tf.tile(target[:, None], [1, 6, 1])
    scores = layer.scorer(tf.concat([tiled, history, tiled - history, tiled * history], -1))
    scores = np.where(mask.numpy(), scores.numpy()[..., 0], -np.inf)
    weights = np.exp(scores - scores.max(1, keepdims=True))
    weights = np.nan_to_num(weights / weights.sum(1, keepdims=True))
    np.testing.assert_allclose(pooled, np.einsum("bl,bld->bd", weights, history.numpy()),
                               atol=1e-5)


def test_shared_histories_by_index_equal_the_gathered_ones():
    """`history_index`: U users' histories for B targets give what the gathered [B, L, D]
    histories give."""
    tf.keras.utils.set_random_seed(1)
    layer = TargetAttention()
    rng = np.random.default_rng(1)
    target = tf.constant(rng.normal(size=[5, 4]), tf.float32)
    history = tf.constant(rng.normal(size=[2, 3, 4]), tf.float32)
    mask = tf.constant([[True, True, False], [True, False, False]])
    index = tf.constant([0, 1, 1, 0, 1])
    np.testing.assert_allclose(
        layer(target, history, mask, history_index=index).numpy(),
        layer(target, tf.gather(history, index), tf.gather(mask, index)).numpy(), atol=1e-6)


def test_no_valid_history_gives_zeros_and_bad_shapes_are_named():
    layer = TargetAttention()
    out = layer(tf.ones([2, 4]), tf.ones([2, 3, 4]), tf.zeros([2, 3], tf.bool))
    assert np.all(out.numpy() == 0)
    with pytest.raises(ValueError, match="history \\[B, L, D\\]"):
        layer(tf.ones([2, 4]), tf.ones([2, 4]), tf.zeros([2, 3], tf.bool))
    with pytest.raises(ValueError, match="hidden_units"):
        TargetAttention(hidden_units=())
