"""The frozen modality encoders' interfaces (the text encoder's real weights are tested in
test_movielens.py, the image backbone's real weights in test_image_backbone.py)."""

import numpy as np
import pytest

from em3_tf.data.encoders import ImageEncoder, _adaptive_average_pool, attribute_tokens


@pytest.fixture(scope="module")
def vit_preset(tmp_path_factory):
    """A tiny, randomly initialised keras-hub ViT saved as a local preset directory, with no
    image converter (checks the "any preset" interface; the default, pretrained EfficientNet-Lite0
    is tested in test_image_backbone.py)."""
    import keras
    import keras_hub
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1,
                                            num_heads=2, hidden_dim=16, mlp_dim=32)
    path = str(tmp_path_factory.mktemp("vit"))
    backbone.save_to_preset(path)
    return path


def test_image_encoder_gives_patch_tokens_and_masks_missing_images(vit_preset):
    rng = np.random.default_rng(0)
    images = [rng.random([40, 48, 3]), None, rng.random([32, 32, 3])]
    tokens, mask = ImageEncoder(vit_preset, image_size=(32, 32)).encode(images)
    assert tokens.shape == (3, 17, 16)  # 16 patches + the class token, hidden size 16
    assert mask.tolist() == [[True] * 17, [False] * 17, [True] * 17]
    assert np.all(tokens[1] == 0) and np.abs(tokens[0]).sum() > 0
    with pytest.raises(ValueError, match="no images"):
        ImageEncoder(vit_preset, image_size=(32, 32)).encode([None])


def test_image_encoder_reads_paths_gray_and_rgba_and_masks_empty_cells(vit_preset, tmp_path):
    from PIL import Image
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, [40, 48, 3], dtype=np.uint8)
    gray = rng.integers(0, 256, [36, 36], dtype=np.uint8)
    path = str(tmp_path / "item.png")
    Image.fromarray(rgb).save(path)
    rgba = np.concatenate([rgb, np.full([40, 48, 1], 7, np.uint8)], axis=2)
    images = [path, rgb, rgba, gray, "", float("nan"), None]
    tokens, mask = ImageEncoder(vit_preset, image_size=(32, 32)).encode(images)
    assert mask.all(axis=1).tolist() == [True] * 4 + [False] * 3
    assert not mask[4:].any() and not tokens[4:].any()
    np.testing.assert_array_equal(tokens[0], tokens[1])  # the PNG file = its pixels
    np.testing.assert_array_equal(tokens[2], tokens[1])  # alpha dropped
    gray_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(
        tokens[3], ImageEncoder(vit_preset, image_size=(32, 32)).encode([gray_rgb])[0][0])
    with pytest.raises(ValueError, match="feature map"):
        ImageEncoder(vit_preset, image_size=(32, 32), grid=(2, 2))  # a ViT gives [N, T, C]


def test_adaptive_average_pool_cells():
    maps = np.random.default_rng(2).normal(size=[2, 7, 5, 3])
    pooled = _adaptive_average_pool(maps, (3, 2))
    assert pooled.shape == (2, 6, 3)
    rows, cols = [(0, 3), (2, 5), (4, 7)], [(0, 3), (2, 5)]  # PyTorch's adaptive cells
    want = np.stack([maps[:, r0:r1, c0:c1].mean(axis=(1, 2)) for r0, r1 in rows
                     for c0, c1 in cols], axis=1)
    np.testing.assert_allclose(pooled, want, atol=1e-12)
    np.testing.assert_allclose(_adaptive_average_pool(maps, (1, 1))[:, 0], maps.mean(axis=(1, 2)),
                               atol=1e-12)


def test_default_image_backbone_missing_names_the_path_and_setup(monkeypatch, tmp_path):
    from em3_tf.data import image_backbone
    missing = str(tmp_path / "efficientnet_lite0")
    monkeypatch.setattr(image_backbone, "DEFAULT_PRESET_DIR", missing)
    with pytest.raises(FileNotFoundError, match=r"not at .*efficientnet_lite0: run ./setup.sh"):
        ImageEncoder()


def test_attribute_tokens_are_one_hot_with_masks():
    tokens, mask = attribute_tokens([["Drama", "1990s"], ["Comedy"], ["unknown-value"]],
                                    ["Comedy", "Drama", "1990s"], max_tokens=2)
    assert tokens.shape == (3, 2, 3)
    assert mask.tolist() == [[True, True], [True, False], [False, False]]
    assert tokens[0, 0].tolist() == [0, 1, 0] and tokens[0, 1].tolist() == [0, 0, 1]
