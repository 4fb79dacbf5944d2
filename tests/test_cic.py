import numpy as np

from em3_tf._tf import tf
from em3_tf.tasks.cic import ContentIdContrastive


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def reference_cic(c, d, ids, temperature, nc=None, nd=None, neg_ids=None):
    """Independent NumPy bidirectional InfoNCE with same-item candidates removed."""
    def norm(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    c, d = norm(c), norm(d)
    cand_ids = ids if neg_ids is None else np.concatenate([ids, neg_ids])
    cand_c = c if nc is None else np.concatenate([c, norm(nc)])
    cand_d = d if nd is None else np.concatenate([d, norm(nd)])
    total = 0.0
    for q, cand in ((c, cand_d), (d, cand_c)):
        logits = q @ cand.T / temperature
        for i in range(len(q)):
            keep = [j for j in range(len(cand)) if j == i or cand_ids[j] != ids[i]]
            row = logits[i, keep][None]
            total += -_log_softmax(row)[0, keep.index(i)]
    return 0.5 * total / len(c)


def _heads(cic, c, d):
    w_c, b_c = cic.content_head.get_weights()
    w_d, b_d = cic.id_head.get_weights()
    return c @ w_c + b_c, d @ w_d + b_d


def test_cic_matches_numpy_reference_with_duplicates():
    rng = np.random.default_rng(0)
    c = rng.normal(size=[6, 10]).astype(np.float32)
    d = rng.normal(size=[6, 7]).astype(np.float32)
    ids = np.array([3, 5, 3, 8, 9, 5])  # items 3 and 5 appear twice, with equal embeddings
    c[2], d[2], c[5], d[5] = c[0], d[0], c[1], d[1]
    tf.keras.utils.set_random_seed(0)
    cic = ContentIdContrastive(projection_dim=4, temperature=0.1)
    loss = float(cic(tf.constant(c), tf.constant(d), tf.constant(ids)))
    pc, pd = _heads(cic, c, d)
    expected = reference_cic(pc, pd, ids, 0.1)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    # Without masking, duplicates would be false negatives and the loss would differ.
    naive = reference_cic(pc, pd, np.arange(6), 0.1)
    assert naive - expected > 0.1


def test_cic_with_sampled_negatives_matches_reference():
    rng = np.random.default_rng(1)
    c, d = rng.normal(size=[5, 8]).astype(np.float32), rng.normal(size=[5, 8]).astype(np.float32)
    nc, nd = rng.normal(size=[3, 8]).astype(np.float32), rng.normal(size=[3, 8]).astype(np.float32)
    ids, neg_ids = np.array([1, 2, 3, 4, 5]), np.array([2, 7, 8])  # negative 2 is a hit
    tf.keras.utils.set_random_seed(0)
    cic = ContentIdContrastive(projection_dim=6, temperature=0.2)
    loss = float(cic(c, d, ids, negative_content=nc, negative_ids=nd, negative_item_ids=neg_ids))
    pc, pd = _heads(cic, c, d)
    pnc, pnd = _heads(cic, nc, nd)
    np.testing.assert_allclose(
        loss, reference_cic(pc, pd, ids, 0.2, pnc, pnd, neg_ids), rtol=1e-4)


def test_aligned_embeddings_give_lower_loss():
    rng = np.random.default_rng(2)
    x = rng.normal(size=[16, 8]).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    cic = ContentIdContrastive(projection_dim=8, temperature=0.1)
    cic(x, x, np.arange(16))
    eye = np.eye(8, dtype=np.float32)
    cic.content_head.set_weights([eye, np.zeros(8, np.float32)])
    cic.id_head.set_weights([eye, np.zeros(8, np.float32)])
    aligned = float(cic(x, x, np.arange(16)))
    shuffled = float(cic(x, x[rng.permutation(16)], np.arange(16)))
    assert aligned < shuffled


def test_validation():
    import pytest
    with pytest.raises(ValueError, match="temperature"):
        ContentIdContrastive(temperature=0)
    with pytest.raises(ValueError, match="projection_dim"):
        ContentIdContrastive(projection_dim=0)
