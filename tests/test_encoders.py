"""The frozen modality encoders' interfaces (the text encoder's real weights are tested in
test_movielens.py)."""

import numpy as np
import pytest

from em3_tf.data.encoders import ImageEncoder, attribute_tokens


@pytest.fixture(scope="module")
def vit_preset(tmp_path_factory):
    """A tiny, randomly initialised keras-hub ViT saved as a local preset directory (no
    pretrained image backbone installs offline here; this checks the preset interface)."""
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


def test_attribute_tokens_are_one_hot_with_masks():
    tokens, mask = attribute_tokens([["Drama", "1990s"], ["Comedy"], ["unknown-value"]],
                                    ["Comedy", "Drama", "1990s"], max_tokens=2)
    assert tokens.shape == (3, 2, 3)
    assert mask.tolist() == [[True, True], [True, False], [False, False]]
    assert tokens[0, 0].tolist() == [0, 1, 0] and tokens[0, 1].tolist() == [0, 0, 1]
