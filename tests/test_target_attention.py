"""`TargetAttention`: the factored first layer equals DIN's concatenated form; the dot scorer
equals its formula."""

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


def test_dot_scores_equal_the_scaled_dot_product_formula():
    """`scorer="dot"`: logits `(t W_q / sqrt(d_k)) . (h W_k)`, masked softmax, weighted sum;
    and the layer comes back from its config with the same scorer."""
    tf.keras.utils.set_random_seed(2)
    layer = TargetAttention(scorer="dot", key_dim=4)
    rng = np.random.default_rng(2)
    target = tf.constant(rng.normal(size=[3, 5]), tf.float32)
    history = tf.constant(rng.normal(size=[3, 6, 5]), tf.float32)
    mask = tf.constant(rng.random([3, 6]) < 0.7)
    pooled = layer(target, history, mask).numpy()
    w_q, w_k = layer.query_kernel.numpy(), layer.key_kernel.numpy()
    logits = np.einsum("bk,blk->bl", target.numpy() @ w_q / 2.0, history.numpy() @ w_k)
    scores, _, _ = layer.scores(target, history, mask)
    np.testing.assert_allclose(scores.numpy()[mask.numpy()], logits[mask.numpy()], atol=1e-5)
    logits = np.where(mask.numpy(), logits, -np.inf)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights = np.nan_to_num(weights / weights.sum(1, keepdims=True))
    np.testing.assert_allclose(pooled, np.einsum("bl,bld->bd", weights, history.numpy()),
                               atol=1e-5)
    clone = TargetAttention.from_config(layer.get_config())
    assert (clone.scorer_kind, clone.key_dim) == ("dot", 4)


def test_keys_of_a_catalog_and_of_histories_equal_the_matrix_product():
    """`keys`, run eagerly as `refit_codebooks` runs it, of a 2-D catalog `[1000, D]` (what
    PQ codebooks are fitted on) and of 3-D histories equal `h W_k` (tolerance 1e-4). TF
    2.16's eager oneDNN `einsum("...d,dk->...k")` got the 2-D case wrong on an AVX-512 AMD
    EPYC (errors of ~30 there; the CI machine has the same CPU kind, and its PQ retrieval
    tests failed), which this catches. `key_dim` differs from `D`, so shapes are checked."""
    tf.keras.utils.set_random_seed(3)
    layer = TargetAttention(scorer="dot", key_dim=16)
    rng = np.random.default_rng(3)
    catalog = rng.normal(size=[1000, 32]).astype(np.float32)
    layer.build(catalog.shape)
    w_k = layer.key_kernel.numpy()
    np.testing.assert_allclose(layer.keys(tf.constant(catalog)).numpy(), catalog @ w_k,
                               atol=1e-4)
    history = catalog.reshape([8, 125, 32])
    np.testing.assert_allclose(layer.keys(tf.constant(history)).numpy(), history @ w_k,
                               atol=1e-4)


@pytest.mark.parametrize("scorer", ["mlp", "dot"])
def test_shared_histories_by_index_equal_the_gathered_ones(scorer):
    """`history_index`: U users' histories for B targets give what the gathered [B, L, D]
    histories give."""
    tf.keras.utils.set_random_seed(1)
    layer = TargetAttention(scorer=scorer)
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
    with pytest.raises(ValueError, match="`scorer` must be one of"):
        TargetAttention(scorer="cosine")
    with pytest.raises(ValueError, match="`key_dim` must be >= 1"):
        TargetAttention(scorer="dot", key_dim=0)
    with pytest.raises(ValueError, match="scorer='dot'"):
        TargetAttention().keys(tf.ones([2, 4]))
