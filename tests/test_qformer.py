import numpy as np
import pytest

from em3_tf._tf import tf
from em3_tf.layers.qformer import FusionQFormer

DIMS = {"text": 12, "image": 8, "attributes": 4}
TOKENS = {"text": 5, "image": 3, "attributes": 2}


def _inputs(names, batch=4, seed=0, missing_rows=()):
    rng = np.random.default_rng(seed)
    tokens = {n: tf.constant(rng.normal(size=[batch, TOKENS[n], DIMS[n]]), tf.float32)
              for n in names}
    masks = {}
    for n in names:
        mask = rng.random([batch, TOKENS[n]]) < 0.8
        mask[:, 0] = True
        for row in missing_rows:
            mask[row] = False
        masks[n] = tf.constant(mask)
    return tokens, masks


@pytest.mark.parametrize("attention", ["joint", "cross"])
@pytest.mark.parametrize("names", [("text",), ("text", "image"), ("text", "image", "attributes")])
def test_output_shapes_for_one_to_three_modalities(attention, names):
    tf.keras.utils.set_random_seed(0)
    layer = FusionQFormer({n: DIMS[n] for n in names}, num_queries=3, num_layers=2, width=16,
                          num_heads=2, attention=attention, output_dim=7)
    tokens, masks = _inputs(names)
    queries, embedding = layer(tokens, masks)
    assert queries.shape == (4, 3, 16)
    assert embedding.shape == (4, 7)
    assert np.all(np.isfinite(embedding.numpy()))


@pytest.mark.parametrize("attention", ["joint", "cross"])
def test_masked_tokens_do_not_change_the_embedding(attention):
    tf.keras.utils.set_random_seed(0)
    layer = FusionQFormer(DIMS, width=16, num_heads=2, attention=attention, output_dim=8)
    tokens, masks = _inputs(DIMS)
    _, before = layer(tokens, masks)
    noisy = {n: tf.where(masks[n][..., None], t, 100.0 * tf.ones_like(t))
             for n, t in tokens.items()}
    _, after = layer(noisy, masks)
    np.testing.assert_allclose(before.numpy(), after.numpy(), atol=1e-5)


@pytest.mark.parametrize("attention", ["joint", "cross"])
def test_missing_modality_rows_and_left_out_modalities(attention):
    tf.keras.utils.set_random_seed(0)
    layer = FusionQFormer(DIMS, width=16, num_heads=2, attention=attention, output_dim=8)
    # Row 1 misses every modality: it gets a finite embedding that ignores its token values.
    tokens, masks = _inputs(DIMS, missing_rows=[1])
    _, embedding = layer(tokens, masks)
    other_tokens = {n: t + 5.0 for n, t in tokens.items()}
    _, embedding2 = layer(other_tokens, masks)
    np.testing.assert_allclose(embedding[1].numpy(), embedding2[1].numpy(), atol=1e-5)
    assert np.all(np.isfinite(embedding.numpy()))
    # Leaving the image out of the call equals masking it out entirely.
    image_off = dict(masks, image=tf.zeros_like(masks["image"]))
    _, masked = layer(tokens, image_off)
    _, left_out = layer({k: v for k, v in tokens.items() if k != "image"},
                        {k: v for k, v in masks.items() if k != "image"})
    np.testing.assert_allclose(masked.numpy(), left_out.numpy(), atol=1e-5)


def test_modality_dropout_only_in_training():
    tf.keras.utils.set_random_seed(0)
    layer = FusionQFormer(DIMS, width=16, num_heads=2, output_dim=8, modality_dropout=0.5)
    tokens, masks = _inputs(DIMS, batch=64)
    _, a = layer(tokens, masks, training=False)
    _, b = layer(tokens, masks, training=False)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    _, c = layer(tokens, masks, training=True)
    assert np.abs(a.numpy() - c.numpy()).max() > 1e-3


def test_bad_arguments_and_inputs_name_the_problem():
    with pytest.raises(ValueError, match="attention"):
        FusionQFormer(DIMS, attention="sideways")
    with pytest.raises(ValueError, match="num_heads"):
        FusionQFormer(DIMS, width=10, num_heads=4)
    with pytest.raises(ValueError, match="modality_dims\\['text'\\]"):
        FusionQFormer({"text": 0})
    layer = FusionQFormer(DIMS, width=16, num_heads=2)
    tokens, masks = _inputs(DIMS)
    with pytest.raises(ValueError, match="Unknown modalities \\['audio'\\]"):
        layer(dict(tokens, audio=tokens["text"]), dict(masks, audio=masks["text"]))
    with pytest.raises(ValueError, match="Modality 'image' tokens must have shape"):
        layer(dict(tokens, image=tokens["text"]), masks)
    with pytest.raises(ValueError, match="'text' has tokens but no mask"):
        layer(tokens, {k: v for k, v in masks.items() if k != "text"})


def test_get_config_round_trip():
    layer = FusionQFormer(DIMS, num_queries=2, width=16, num_heads=2, attention="cross",
                          output_dim=5, lora_rank=3)
    clone = FusionQFormer.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_output_lora_scope_adapts_only_the_output_projection():
    """`lora_scope="output"`: the adapted branch is the frozen Q-Former's output plus a
    low-rank correction; only the output adapter gets gradients, and only it exists."""
    tf.keras.utils.set_random_seed(0)
    layer = FusionQFormer({"text": DIMS["text"]}, width=16, num_heads=2, output_dim=6,
                          lora_scope="output")
    tokens, masks = _inputs(("text",))
    plain = layer(tokens, masks)[1]
    layer.output_projection.lora_b.assign(tf.random.normal([4, 6], stddev=0.5, seed=1))
    adapters = layer.adapter_variables()
    assert {v.name for v in adapters} == {v.name for v in
                                          layer.output_projection.adapter_variables}
    with tf.GradientTape() as tape:
        adapted = layer(tokens, masks, training=True, adapter=True)[1]
        loss = tf.reduce_sum(adapted ** 2)
    grads = dict(zip([v.name for v in layer.trainable_variables],
                     tape.gradient(loss, layer.trainable_variables)))
    assert {n for n, g in grads.items() if g is not None} == {v.name for v in adapters}
    assert np.abs(adapted.numpy() - plain.numpy()).max() > 1e-3  # the adapter is in use
    # at inference the adapter is merged into its kernel: the same embedding
    np.testing.assert_allclose(layer(tokens, masks, training=False, adapter=True)[1].numpy(),
                               adapted.numpy(),
                               atol=1e-5)
    with pytest.raises(ValueError, match="`lora_scope`"):
        FusionQFormer({"text": 4}, lora_scope="inner")
