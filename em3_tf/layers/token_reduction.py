"""A frozen reduction of item token features: PCA of each token, then segment pooling."""

from typing import Dict

import numpy as np

from em3_tf._tf import keras, tf


def masked_mean(tokens, mask, axis):
    """Mean of `tokens [..., T, D]` over the tokens where `mask [..., T]` is true (zero where
    none is), along the token `axis` (NumPy or TF tensors)."""
    if isinstance(tokens, np.ndarray):
        weight = mask.astype(np.float32)[..., None]
        total = (tokens.astype(np.float32) * weight).sum(axis=axis)
        return total / np.maximum(weight.sum(axis=axis), 1.0)
    weight = tf.cast(mask, tf.float32)[..., None]
    total = tf.reduce_sum(tf.cast(tokens, tf.float32) * weight, axis=axis)
    return total / tf.maximum(tf.reduce_sum(weight, axis=axis), 1.0)


class TokenReduction(keras.layers.Layer):
    """Shrinks each modality's token sequence `[n, T_m, D_m]` before the Fusion-Q-Former.

    Two frozen steps, both fitted once on the item catalog (content only, no labels):

    1. **PCA per token**: `x' = (x - mu_m) V_m`, with `mu_m` the mean of the modality's real
       tokens and `V_m [D_m, d]` their top-`d` principal directions, `d = min(dim, D_m)`.
       Modalities with `D_m <= dim` are left as they are.
    2. **Segment pooling**: the `T_m` tokens are cut into consecutive segments of
       `ceil(T_m / max_tokens)` tokens (at most `max_tokens` segments), each replaced by the
       masked mean of its real tokens; a segment is real when any of its tokens is.
       Modalities with `T_m <= max_tokens` keep their tokens.

    The Q-Former's cost per item is dominated by its input projection (`T_m D_m width`
    multiply-adds) and by keys and values over all tokens, so this cuts the training step of
    EM3's history branch, which encodes every distinct history item of a batch. Padded
    tokens stay zero. The fitted means and bases are non-trainable weights, exported with the
    model, so items added after training are reduced the same way.

    Args:
      modality_shapes: `{modality: (T_m, D_m)}` of the raw token features.
      dim: PCA size `d` per token, or 0 to keep every modality's `D_m`.
      max_tokens: segments per modality, or 0 to keep every modality's `T_m`.

    Call arguments:
      tokens: `{modality: float [n, T_m, D_m]}`.
      masks: `{modality: bool [n, T_m]}`.

    Returns:
      `(tokens {modality: float32 [n, T'_m, D'_m]}, masks {modality: bool [n, T'_m]})`.

    Example:
    >>> reduction = TokenReduction({"text": (24, 384)}, dim=64, max_tokens=8)
    >>> reduction.fit(catalog.tokens, catalog.masks)
    >>> tokens, masks = reduction(catalog.tokens, catalog.masks)   # text: [n, 8, 64]
    """

    def __init__(self, modality_shapes: Dict[str, tuple], dim=0, max_tokens=0, **kwargs):
        kwargs.setdefault("dtype", "float32")  # a PCA in float16 would lose the small axes
        super().__init__(trainable=False, **kwargs)
        if int(dim) < 0:
            raise ValueError(f"`dim` must be >= 0 (0 keeps the token size), got {dim!r}.")
        if int(max_tokens) < 0:
            raise ValueError(f"`max_tokens` must be >= 0 (0 keeps the tokens), got "
                             f"{max_tokens!r}.")
        self.modality_shapes = {n: (int(t), int(d)) for n, (t, d) in modality_shapes.items()}
        self.dim, self.max_tokens = int(dim), int(max_tokens)
        self.means, self.bases = {}, {}
        for name, (_, size) in self.modality_shapes.items():
            if self.dim and size > self.dim:
                self.means[name] = self.add_weight(f"{name}_mean", [size], trainable=False,
                                                   initializer="zeros")
                self.bases[name] = self.add_weight(f"{name}_basis", [size, self.dim],
                                                   trainable=False, initializer="zeros")

    @property
    def output_dims(self) -> Dict[str, int]:
        """`{modality: D'_m}`: the token size the Q-Former sees."""
        return {n: (self.dim if n in self.bases else d)
                for n, (_, d) in self.modality_shapes.items()}

    @property
    def output_shapes(self) -> Dict[str, tuple]:
        """`{modality: (T'_m, D'_m)}`."""
        return {n: (self._segments(t)[0], self.output_dims[n])
                for n, (t, _) in self.modality_shapes.items()}

    def _segments(self, length):
        """`(segments, tokens per segment)` of a modality with `length` tokens."""
        if not self.max_tokens or length <= self.max_tokens:
            return length, 1
        size = -(-length // self.max_tokens)
        return -(-length // size), size

    def fit(self, tokens: Dict[str, np.ndarray], masks: Dict[str, np.ndarray],
            max_fit_tokens=200_000):
        """Fits each reduced modality's mean and PCA basis on its real tokens (at most
        `max_fit_tokens` of them, evenly spaced, to bound memory on large catalogs)."""
        for name in self.bases:
            real = np.asarray(tokens[name])[np.asarray(masks[name], bool)]
            real = real[::max(1, -(-len(real) // max_fit_tokens))].astype(np.float64)
            if len(real) < 2:
                raise ValueError(f"TokenReduction needs at least 2 real '{name}' tokens to fit "
                                 f"a PCA, got {len(real)}.")
            mean = real.mean(axis=0)
            _, _, vt = np.linalg.svd(real - mean, full_matrices=False)
            basis = np.zeros([real.shape[1], self.dim])
            basis[:, :min(self.dim, len(vt))] = vt[:self.dim].T
            self.means[name].assign(mean.astype(np.float32))
            self.bases[name].assign(basis.astype(np.float32))
        return self

    def call(self, tokens, masks):
        out_tokens, out_masks = {}, {}
        for name, value in tokens.items():
            x = tf.cast(value, tf.float32)
            mask = tf.cast(masks[name], tf.bool)
            if name in self.bases:
                x = tf.einsum("ntd,de->nte", x - self.means[name], self.bases[name])
                x *= tf.cast(mask, tf.float32)[..., None]
            segments, size = self._segments(self.modality_shapes[name][0])
            if size > 1:
                pad = segments * size - self.modality_shapes[name][0]
                x = tf.pad(x, [[0, 0], [0, pad], [0, 0]])
                mask = tf.pad(mask, [[0, 0], [0, pad]])
                x = tf.reshape(x, [-1, segments, size, x.shape[-1]])
                mask = tf.reshape(mask, [-1, segments, size])
                x, mask = masked_mean(x, mask, axis=2), tf.reduce_any(mask, axis=2)
            out_tokens[name], out_masks[name] = x, mask
        return out_tokens, out_masks

    def get_config(self):
        config = super().get_config()
        config.update(modality_shapes={n: list(s) for n, s in self.modality_shapes.items()},
                      dim=self.dim, max_tokens=self.max_tokens)
        return config
