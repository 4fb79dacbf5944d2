"""`TokenReduction`: the frozen PCA + segment pooling of item tokens, and the content encoder
that uses it."""

import numpy as np
import pytest

from em3_tf._tf import tf
from em3_tf.catalog import ItemCatalog
from em3_tf.layers.content_encoder import ItemContentEncoder
from em3_tf.layers.token_reduction import TokenReduction


def _tokens(n=40, length=7, size=16, rank=3, seed=0):
    """Tokens that lie in a `rank`-dim affine subspace, with ragged masks."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=[rank, size])
    tokens = rng.normal(size=[n, length, rank]) @ basis + rng.normal(size=size)
    mask = np.arange(length)[None] < rng.integers(1, length + 1, size=n)[:, None]
    mask[-1] = False  # an item with no tokens of this modality
    return (tokens * mask[..., None]).astype(np.float32), mask


def test_pca_matches_numpy_and_keeps_a_low_rank_signal_exactly():
    tokens, mask = _tokens()
    reduction = TokenReduction({"text": (7, 16)}, dim=3).fit({"text": tokens}, {"text": mask})
    out, out_mask = reduction({"text": tokens}, {"text": mask})
    out = out["text"].numpy()
    real = tokens[mask].astype(np.float64)
    mean = real.mean(0)
    basis = np.linalg.svd(real - mean, full_matrices=False)[2][:3].T
    expected = ((tokens - mean) @ basis) * mask[..., None]
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # 3 dims hold all of a rank-3 signal: the tokens come back from the reduced ones
    back = out @ basis.T + mean
    np.testing.assert_allclose(back[mask], tokens[mask], atol=1e-3)
    assert np.all(out[~mask] == 0) and out_mask["text"].numpy().tolist() == mask.tolist()


def test_segment_pooling_is_the_masked_mean_of_each_segment():
    tokens, mask = _tokens(n=5, length=7, size=4)
    reduction = TokenReduction({"text": (7, 4)}, max_tokens=3)  # segments of 3: [0-2][3-5][6]
    assert reduction.output_shapes == {"text": (3, 4)}
    out, out_mask = reduction({"text": tokens}, {"text": mask})
    for row in range(5):
        for segment, (start, stop) in enumerate([(0, 3), (3, 6), (6, 7)]):
            real = mask[row, start:stop]
            assert out_mask["text"].numpy()[row, segment] == real.any()
            expected = tokens[row, start:stop][real].mean(0) if real.any() else np.zeros(4)
            np.testing.assert_allclose(out["text"].numpy()[row, segment], expected, atol=1e-5)


def test_small_modalities_pass_through_and_bad_arguments_are_named():
    tokens, mask = _tokens(size=4, length=2)
    reduction = TokenReduction({"attributes": (2, 4)}, dim=8, max_tokens=4)
    out, _ = reduction({"attributes": tokens}, {"attributes": mask})
    np.testing.assert_allclose(out["attributes"].numpy(), tokens)
    assert reduction.weights == []
    with pytest.raises(ValueError, match="`dim`"):
        TokenReduction({"text": (7, 16)}, dim=-1)
    with pytest.raises(ValueError, match="`max_tokens`"):
        TokenReduction({"text": (7, 16)}, max_tokens=-2)
    with pytest.raises(ValueError, match="at least 2 real 'text' tokens"):
        TokenReduction({"text": (7, 16)}, dim=2).fit({"text": tokens[:1, :1]},
                                                    {"text": np.zeros([1, 1], bool)})


@pytest.mark.parametrize("kind", ["qformer", "frozen"])
def test_encoder_reduces_new_items_exactly_like_catalog_items(kind):
    """`encode_tokens` (raw tokens of items added after training) gives what the encoder
    gives the same items from its stored, reduced catalog."""
    text, text_mask = _tokens(n=30, length=9, size=20, rank=5, seed=1)
    attrs, attrs_mask = _tokens(n=30, length=2, size=3, rank=2, seed=2)
    catalog = ItemCatalog(np.arange(100, 130), {"text": text, "attributes": attrs},
                          {"text": text_mask, "attributes": attrs_mask}, {})
    tf.keras.utils.set_random_seed(0)
    encoder = ItemContentEncoder(catalog, kind=kind, output_dim=6, token_dim=4, max_tokens=3,
                                 qformer_kwargs=dict(width=8, num_heads=2))
    assert encoder.modality_dims == {"text": 4, "attributes": 3}
    assert np.abs(encoder.reduction.bases["text"].numpy()).min(axis=0).max() > 0  # fitted
    assert encoder.token_shapes == {"text": (9, 20), "attributes": (2, 3)}
    stored = encoder(encoder.rows_of(tf.constant(catalog.item_ids)))
    fresh = encoder.encode_tokens({"text": text, "attributes": attrs},
                                  {"text": text_mask, "attributes": attrs_mask})
    np.testing.assert_allclose(fresh.numpy(), stored.numpy(), atol=1e-5)
