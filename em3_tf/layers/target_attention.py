"""DIN-style target attention: pools a user's history against the target item."""

from em3_tf._tf import keras, tf


class TargetAttention(keras.layers.Layer):
    """Pools history embeddings with weights computed against a target embedding.

    As in DIN, a small MLP scores each history item from `[t, h, t - h, t * h]`; the scores
    are soft-maxed over the valid (masked-in) positions and used to average the history. A
    user with no valid history gets a zero vector.

    The first layer is computed in factored form, with the same weights and the same result:
    `[t, h, t - h, t * h] W + b = t (W_1 + W_3) + h (W_2 - W_3) + (t * h) W_4 + b`, so the
    target term is paid once per example and the per-entry terms read `D`, not `4 D`, inputs.
    When several targets share one history (the candidates of one request), pass each
    user's history once with `history_index`: the `h` term is then computed once per user.

    Args:
      hidden_units: sizes of the scoring MLP's hidden layers.

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
    """

    def __init__(self, hidden_units=(32,), **kwargs):
        super().__init__(**kwargs)
        if not hidden_units or any(int(u) < 1 for u in hidden_units):
            raise ValueError(f"`hidden_units` must be positive sizes, got {hidden_units!r}.")
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.scorer = keras.Sequential(
            [keras.layers.Dense(u, activation="relu") for u in self.hidden_units]
            + [keras.layers.Dense(1)])

    def build(self, input_shape):  # the target's shape, [B, D]
        self.scorer.build([None, None, 4 * int(input_shape[-1])])
        super().build(input_shape)

    def scores(self, target, history, mask, history_index=None):
        """`(scores [B, L], history [B, L, D], mask [B, L])`: each entry's attention logit
        (masked entries at the dtype's minimum), with `history` and `mask` per target."""
        if target.shape.rank != 2 or history.shape.rank != 3 or mask.shape.rank != 2:
            raise ValueError(f"TargetAttention expects target [B, D], history [B, L, D], mask "
                             f"[B, L]; got {target.shape}, {history.shape}, {mask.shape}.")
        if not self.built:  # `scores` may be called before the layer is
            self.build(target.shape)
        history = tf.cast(history, target.dtype)  # Keras autocasts only the first argument
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
        config.update(hidden_units=list(self.hidden_units))
        return config
