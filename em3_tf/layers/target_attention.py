"""Target attention: pools a user's history against the target item."""

from em3_tf._tf import keras, tf

SCORERS = ("mlp", "dot")


class TargetAttention(keras.layers.Layer):
    """Pools history embeddings with weights computed against a target embedding.

    Two scorers of history entry `h` against target `t`:

    - `"mlp"` (DIN, arXiv 1706.06978): a small MLP over `[t, h, t - h, t * h]`. Its first
      layer is computed in factored form, with the same weights and the same result:
      `[t, h, t - h, t * h] W + b = t (W_1 + W_3) + h (W_2 - W_3) + (t * h) W_4 + b`, so the
      target term is paid once per example and the per-entry terms read `D`, not `4 D`, inputs.
    - `"dot"` (scaled dot product): `s(t, h) = q(t) . k(h)` with `q(t) = t W_q / sqrt(d_k)` and
      `k(h) = h W_k` (no biases). Being an inner product, linear in `h`, it is the scorer that
      product-quantized retrieval can approximate (`CodebookRetrieval` scores `q(t)` against
      PQ codes of `k(h)`): the retrieval then ranks by the attention's own logits, as TWIN
      (arXiv 2302.02352) makes its search and its attention agree.

    The scores are soft-maxed over the valid (masked-in) positions and used to average the
    history. A user with no valid history gets a zero vector. When several targets share one
    history (the candidates of one request), pass each user's history once with
    `history_index`: the per-entry terms are then computed once per user.

    Args:
      hidden_units: sizes of the `"mlp"` scorer's hidden layers.
      scorer: `"mlp"` or `"dot"`.
      key_dim: `d_k` of the `"dot"` scorer (default: the target's size).

    Call arguments:
      target: `[B, D]`.
      history: `[B, L, D]`.
      mask: bool `[B, L]`, true for real history items.
      history_index: optional int `[B]`: `history` and `mask` then hold `U` users' rows
        (`[U, L, D]`, `[U, L]`) and target `b` attends to row `history_index[b]`.

    Returns:
      `[B, D]`.

    Example:
    >>> pooled = TargetAttention()(tf.ones([2, 8]), tf.ones([2, 5, 8]), tf.ones([2, 5], tf.bool))
    >>> dot = TargetAttention(scorer="dot")
    >>> pooled = dot(tf.ones([2, 8]), tf.ones([2, 5, 8]), tf.ones([2, 5], tf.bool))
    """

    def __init__(self, hidden_units=(32,), scorer="mlp", key_dim=None, **kwargs):
        super().__init__(**kwargs)
        if not hidden_units or any(int(u) < 1 for u in hidden_units):
            raise ValueError(f"`hidden_units` must be positive sizes, got {hidden_units!r}.")
        if scorer not in SCORERS:
            raise ValueError(f"`scorer` must be one of {SCORERS}, got {scorer!r}.")
        if key_dim is not None and int(key_dim) < 1:
            raise ValueError(f"`key_dim` must be >= 1, got {key_dim!r}.")
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.scorer_kind, self.key_dim = scorer, None if key_dim is None else int(key_dim)
        if scorer == "mlp":
            self.scorer = keras.Sequential(
                [keras.layers.Dense(u, activation="relu") for u in self.hidden_units]
                + [keras.layers.Dense(1)])

    def build(self, input_shape):  # the target's shape, [B, D]
        dim = int(input_shape[-1])
        if self.scorer_kind == "mlp":
            self.scorer.build([None, None, 4 * dim])
        else:
            self.key_dim = self.key_dim or dim
            self.query_kernel = self.add_weight(name="query_kernel", shape=[dim, self.key_dim],
                                                initializer="glorot_uniform")
            self.key_kernel = self.add_weight(name="key_kernel", shape=[dim, self.key_dim],
                                              initializer="glorot_uniform")
        super().build(input_shape)

    def queries(self, target):
        """`"dot"` scorer: `q(t)` `[B, d_k]` (scaled by `1 / sqrt(d_k)`)."""
        self._need_dot(target)
        kernel = tf.cast(self.query_kernel, target.dtype)
        return tf.matmul(target, kernel) / tf.cast(self.key_dim, target.dtype) ** 0.5

    def keys(self, history):
        """`"dot"` scorer: `k(h)` `[..., d_k]` of history entries `[..., D]`."""
        self._need_dot(history)
        # Not `tf.einsum("...d,dk->...k")`: run eagerly on a 2-D input of about 100 rows or
        # more, TF 2.16's oneDNN kernel returned wrong values on an AVX-512 AMD EPYC (right
        # inside a tf.function, and with TF_ENABLE_ONEDNN_OPTS=0); see
        # `test_keys_of_a_catalog_and_of_histories_equal_the_matrix_product`.
        return tf.tensordot(history, tf.cast(self.key_kernel, history.dtype), axes=1)

    def _need_dot(self, x):
        if self.scorer_kind != "dot":
            raise ValueError("`queries`/`keys` exist for `scorer='dot'` only.")
        if not self.built:
            self.build(x.shape)

    def scores(self, target, history, mask, history_index=None):
        """`(scores [B, L], history [B, L, D], mask [B, L])`: each entry's attention logit
        (masked entries at the dtype's minimum), with `history` and `mask` per target."""
        if target.shape.rank != 2 or history.shape.rank != 3 or mask.shape.rank != 2:
            raise ValueError(f"TargetAttention expects target [B, D], history [B, L, D], mask "
                             f"[B, L]; got {target.shape}, {history.shape}, {mask.shape}.")
        if not self.built:  # `scores` may be called before the layer is
            self.build(target.shape)
        history = tf.cast(history, target.dtype)  # Keras autocasts only the first argument
        if self.scorer_kind == "dot":
            keys = self.keys(history)
            if history_index is not None:
                history, mask, keys = (tf.gather(x, history_index)
                                       for x in (history, mask, keys))
            scores = tf.einsum("bk,blk->bl", self.queries(target), keys)
            return tf.where(mask, scores, scores.dtype.min), history, mask
        first, rest = self.scorer.layers[0], self.scorer.layers[1:]
        w_t, w_h, w_d, w_p = tf.split(tf.cast(first.kernel, history.dtype), 4, axis=0)
        per_entry = tf.einsum("bld,dh->blh", history, w_h - w_d)
        if history_index is not None:
            history, mask, per_entry = (tf.gather(x, history_index)
                                        for x in (history, mask, per_entry))
        hidden = (tf.matmul(target, w_t + w_d)[:, None, :] + per_entry
                  + tf.einsum("bld,dh->blh", target[:, None, :] * history, w_p)
                  + tf.cast(first.bias, history.dtype))
        scores = first.activation(hidden)
        for layer in rest:
            scores = layer(scores)
        return tf.where(mask, scores[..., 0], scores.dtype.min), history, mask

    def call(self, target, history, mask, history_index=None):
        scores, history, mask = self.scores(target, history, mask, history_index)
        weights = tf.nn.softmax(scores, axis=-1) * tf.cast(mask, scores.dtype)
        return tf.einsum("bl,bld->bd", weights, history)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=list(self.hidden_units), scorer=self.scorer_kind,
                      key_dim=self.key_dim)
        return config
