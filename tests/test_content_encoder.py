"""`ItemContentEncoder`: modality dropout, the same knob for every content encoder."""

import itertools

import numpy as np
import pytest

from em3_tf._tf import tf
from em3_tf.catalog import ItemCatalog
from em3_tf.config import EM3Config
from em3_tf.layers.content_encoder import ItemContentEncoder
from em3_tf.training import build_ranker


def _catalog(n=400, seed=0):
    """SYNTHETIC catalog: 2 modalities of random tokens, every item with both."""
    rng = np.random.default_rng(seed)
    tokens = {"text": rng.normal(size=[n, 3, 5]).astype(np.float32),
              "attributes": rng.normal(size=[n, 2, 4]).astype(np.float32)}
    masks = {name: np.ones(t.shape[:2], bool) for name, t in tokens.items()}
    return ItemCatalog(np.arange(1000, 1000 + n), tokens, masks, {})


@pytest.mark.parametrize("kind,token_dim", [("frozen", 0), ("concat_mlp", 0), ("frozen", 3)])
def test_pooled_encoders_drop_whole_modalities_per_example_in_training_only(kind, token_dim):
    """Each training output is the MLP of the item's pooled vector with some modalities'
    parts zeroed (one draw per example and modality: each dropped at rate 0.5, and the two
    differing in half the items, within 0.1 over 400 items); inference drops nothing."""
    catalog = _catalog()
    tf.keras.utils.set_random_seed(0)
    encoder = ItemContentEncoder(catalog, kind=kind, output_dim=6, modality_dropout=0.5,
                                 token_dim=token_dim)
    rows = encoder.rows_of(tf.constant(catalog.item_ids))
    pooled = tf.gather(encoder.pooled, rows)
    np.testing.assert_allclose(encoder(rows, training=False).numpy(),
                               encoder.mlp(pooled).numpy(), atol=1e-6)
    out = encoder(rows, training=True).numpy()
    sizes = list(encoder.modality_dims.values())
    patterns = list(itertools.product([0.0, 1.0], repeat=len(sizes)))
    candidates = np.stack([encoder.mlp(pooled * np.repeat(p, sizes)[None]).numpy()
                           for p in patterns])  # [patterns, n, 6]
    error = np.abs(candidates - out[None]).max(axis=-1)  # [patterns, n]
    assert error.min(axis=0).max() < 1e-5, "an output is no pattern of kept modalities"
    kept = np.array(patterns)[error.argmin(axis=0)]  # [n, modalities]
    np.testing.assert_allclose(kept.mean(axis=0), [0.5, 0.5], atol=0.1)
    assert abs((kept[:, 0] != kept[:, 1]).mean() - 0.5) < 0.1


def test_modality_dropout_is_validated_and_reaches_every_encoder(small_data):
    """The pooled presets keep the 0.0 their recorded runs had; an override reaches every
    encoder kind."""
    for preset in ("frozen_content", "frozen_content_no_cic", "em3_no_qformer"):
        assert EM3Config.preset(preset).modality_dropout == 0.0, preset
    with pytest.raises(ValueError, match="`modality_dropout` must be in \\[0, 1\\), got 1.0"):
        ItemContentEncoder(_catalog(n=4), kind="frozen", modality_dropout=1.0)
    for preset, kind in (("frozen_content", "frozen"), ("em3_no_qformer", "concat_mlp"),
                         ("em3", "qformer")):
        config = EM3Config.preset(preset, max_history_len=10, width=16, num_heads=2,
                                  modality_dropout=0.3)
        content = build_ranker(config, small_data).content
        assert (content.kind, content.modality_dropout) == (kind, 0.3), preset
        if kind == "qformer":
            assert content.qformer.modality_dropout == 0.3
