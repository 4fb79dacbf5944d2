"""Fusion-Q-Former: trainable queries fuse several modalities into a fixed-length embedding."""

import math

from em3_tf._tf import keras, tf
from em3_tf.layers.lora import LoRADense


class _LayerNorm(keras.layers.Layer):
    """Layer normalisation whose scale and offset can be stop-gradient (`adapter=True`)."""

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.gamma = self.add_weight("gamma", [dim], initializer="ones")
        self.beta = self.add_weight("beta", [dim], initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, adapter=False):
        gamma, beta = self.gamma, self.beta
        if adapter:
            gamma, beta = tf.stop_gradient(gamma), tf.stop_gradient(beta)
        mean, variance = tf.nn.moments(inputs, axes=[-1], keepdims=True)
        normed = (inputs - mean) * tf.math.rsqrt(variance + self.epsilon)
        return normed * tf.cast(gamma, inputs.dtype) + tf.cast(beta, inputs.dtype)


class _Attention(keras.layers.Layer):
    """Multi-head attention whose four projections are `LoRADense` layers.

    Shapes: query `[B, Tq, W]`, key/value `[B, Tk, W]`, key mask `[B, Tk]` -> `[B, Tq, W]`.
    """

    def __init__(self, width, num_heads, lora_rank, lora_alpha, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        dense = dict(rank=lora_rank, alpha=lora_alpha, base_trainable=True)
        self.query_dense = LoRADense(width, name="query", **dense)
        self.key_dense = LoRADense(width, name="key", **dense)
        self.value_dense = LoRADense(width, name="value", **dense)
        self.output_dense = LoRADense(width, name="output", **dense)

    def _split_heads(self, x):
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [batch, length, self.num_heads, self.head_dim])
        return tf.transpose(x, [0, 2, 1, 3])

    def call(self, query, key_value, key_mask=None, adapter=False):
        q = self._split_heads(self.query_dense(query, adapter=adapter))
        k = self._split_heads(self.key_dense(key_value, adapter=adapter))
        v = self._split_heads(self.value_dense(key_value, adapter=adapter))
        logits = tf.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(self.head_dim)
        if key_mask is not None:
            logits = tf.where(key_mask[:, None, None, :], logits, logits.dtype.min)
        weights = tf.nn.softmax(logits, axis=-1)
        out = tf.transpose(tf.einsum("bhqk,bhkd->bhqd", weights, v), [0, 2, 1, 3])
        out = tf.reshape(out, [tf.shape(query)[0], tf.shape(query)[1],
                               self.num_heads * self.head_dim])
        return self.output_dense(out, adapter=adapter)


class _FeedForward(keras.layers.Layer):
    def __init__(self, width, multiplier, lora_rank, lora_alpha, **kwargs):
        super().__init__(**kwargs)
        dense = dict(rank=lora_rank, alpha=lora_alpha, base_trainable=True)
        self.inner = LoRADense(width * multiplier, name="inner", **dense)
        self.outer = LoRADense(width, name="outer", **dense)

    def call(self, inputs, adapter=False):
        return self.outer(tf.nn.gelu(self.inner(inputs, adapter=adapter)), adapter=adapter)


class _Block(keras.layers.Layer):
    """One pre-norm transformer block in `joint` or `cross` arrangement."""

    def __init__(self, attention, width, num_heads, ffn_multiplier, lora_rank, lora_alpha,
                 **kwargs):
        super().__init__(**kwargs)
        self.attention = attention
        lora = dict(lora_rank=lora_rank, lora_alpha=lora_alpha)
        self.norm_query = _LayerNorm(name="norm_query")
        self.self_attention = _Attention(width, num_heads, name="self_attention", **lora)
        if attention == "cross":
            self.norm_cross = _LayerNorm(name="norm_cross")
            self.norm_tokens = _LayerNorm(name="norm_tokens")
            self.cross_attention = _Attention(width, num_heads, name="cross_attention", **lora)
        self.norm_ffn = _LayerNorm(name="norm_ffn")
        self.ffn = _FeedForward(width, ffn_multiplier, name="ffn", **lora)

    def call(self, queries, tokens, token_mask, adapter=False, queries_only=False):
        """Returns the new `(queries, tokens)`; `tokens` is unchanged in `cross` mode.

        In `joint` mode queries and tokens attend to each other in one self-attention; with
        `queries_only` (the last block) only the query rows are computed, the rest being
        discarded anyway.
        """
        a = dict(adapter=adapter)
        if self.attention == "joint":
            num_queries = tf.shape(queries)[1]
            x = tf.concat([queries, tokens], axis=1)
            mask = tf.concat([tf.ones(tf.shape(queries)[:2], tf.bool), token_mask], axis=1)
            normed = self.norm_query(x, **a)
            rows = x[:, :num_queries] if queries_only else x
            row_norm = normed[:, :num_queries] if queries_only else normed
            h = rows + self.self_attention(row_norm, normed, mask, **a)
            h = h + self.ffn(self.norm_ffn(h, **a), **a)
            return h[:, :num_queries], (tokens if queries_only else h[:, num_queries:])
        normed = self.norm_query(queries, **a)
        h = queries + self.self_attention(normed, normed, None, **a)
        has_tokens = tf.cast(tf.reduce_any(token_mask, axis=1), h.dtype)[:, None, None]
        cross = self.cross_attention(self.norm_cross(h, **a), self.norm_tokens(tokens, **a),
                                     token_mask, **a)
        h = h + cross * has_tokens  # an item with no tokens at all gets no cross update
        h = h + self.ffn(self.norm_ffn(h, **a), **a)
        return h, tokens


class FusionQFormer(keras.layers.Layer):
    """Fuses modality token sequences into `num_queries` tokens and one content embedding.

    Each modality `m` is projected from its own size `D_m` to `width` and tagged with a
    learned modality embedding. `num_queries` trainable query tokens then pass through
    `num_layers` transformer blocks:

    - `attention="joint"`: queries are concatenated with all modality tokens in one
      self-attention (EM3's public reference arrangement; 1-2 queries, 1 layer, width 64).
    - `attention="cross"`: BLIP-2 style; self-attention over the queries, cross-attention from
      queries into the modality tokens, feed-forward.

    The query outputs are flattened and projected to `output_dim`: the item content embedding.
    Any modality may be missing for an item (all-false mask) or left out of the call. In
    training each modality is dropped per example with probability `modality_dropout`, so the
    embedding stays usable when a modality is missing at serving time.

    Every dense projection is a `LoRADense`: called with `adapter=True` (EM3's history branch)
    all base weights are stop-gradient and only the low-rank adapters receive gradients. With
    `lora_scope="all"` every projection has an adapter; with `"output"` only the output
    projection has one, so the adapted branch is the frozen Q-Former's output plus a low-rank
    correction and its training step needs no backward pass through the Q-Former.

    Args:
      modality_dims: `{modality name: token feature size D_m}`, in a fixed order.
      num_queries, num_layers, width, num_heads, ffn_multiplier: transformer shape.
      attention: `"joint"` or `"cross"`.
      output_dim: size of the pooled content embedding.
      modality_dropout: per-example, per-modality drop probability in training.
      lora_rank, lora_alpha: adapter rank and scale numerator of every projection.
      lora_scope: `"all"` (an adapter in every projection) or `"output"` (in the output
        projection only).

    Call arguments:
      tokens: `{modality: float [B, T_m, D_m]}`.
      masks: `{modality: bool [B, T_m]}`, true for real tokens.
      training: enables modality dropout.
      adapter: use LoRA adapters over stop-gradient base weights (with `training=False`,
        the adapters merged into the base kernels: one matmul per projection).

    Returns:
      `(query_outputs [B, num_queries, width], embedding [B, output_dim])`.

    Example:
    >>> qformer = FusionQFormer({"text": 384, "attributes": 16}, output_dim=32)
    >>> queries, embedding = qformer(
    ...     {"text": tf.zeros([4, 20, 384]), "attributes": tf.zeros([4, 3, 16])},
    ...     {"text": tf.ones([4, 20], tf.bool), "attributes": tf.ones([4, 3], tf.bool)})
    >>> embedding.shape
    TensorShape([4, 32])
    """

    def __init__(self, modality_dims, num_queries=2, num_layers=1, width=64, num_heads=4,
                 attention="joint", ffn_multiplier=2, output_dim=32, modality_dropout=0.0,
                 lora_rank=4, lora_alpha=8.0, lora_scope="all", seed=None, **kwargs):
        super().__init__(**kwargs)
        if not modality_dims:
            raise ValueError("`modality_dims` must name at least one modality.")
        for name, dim in modality_dims.items():
            if int(dim) < 1:
                raise ValueError(f"`modality_dims['{name}']` must be >= 1, got {dim!r}.")
        if attention not in ("joint", "cross"):
            raise ValueError(f"`attention` must be 'joint' or 'cross', got {attention!r}.")
        if width % num_heads:
            raise ValueError(f"`width` ({width}) must be divisible by `num_heads` ({num_heads}).")
        if lora_scope not in ("all", "output"):
            raise ValueError(f"`lora_scope` must be 'all' or 'output', got {lora_scope!r}.")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"`modality_dropout` must be in [0, 1), got {modality_dropout!r}.")
        self.modality_dims = {str(k): int(v) for k, v in modality_dims.items()}
        self.num_queries = int(num_queries)
        self.num_layers = int(num_layers)
        self.width = int(width)
        self.num_heads = int(num_heads)
        self.attention = attention
        self.ffn_multiplier = int(ffn_multiplier)
        self.output_dim = int(output_dim)
        self.modality_dropout = float(modality_dropout)
        self.lora_rank = int(lora_rank)
        self.lora_alpha = float(lora_alpha)
        self.lora_scope = lora_scope
        self.seed = seed
        inner_rank = self.lora_rank if lora_scope == "all" else 0
        lora = dict(rank=inner_rank, alpha=lora_alpha, base_trainable=True)
        self.projections = {
            name: LoRADense(width, name=f"project_{name}", **lora) for name in modality_dims}
        self.token_norm = _LayerNorm(name="token_norm")
        self.blocks = [
            _Block(attention, width, num_heads, ffn_multiplier, inner_rank, lora_alpha,
                   name=f"block_{i}") for i in range(num_layers)]
        self.output_norm = _LayerNorm(name="output_norm")
        self.output_projection = LoRADense(output_dim, name="output_projection",
                                           **{**lora, "rank": self.lora_rank})

    def build(self, input_shape):
        self.queries = self.add_weight(
            "queries", [self.num_queries, self.width],
            initializer=keras.initializers.TruncatedNormal(stddev=0.02, seed=self.seed))
        self.modality_embeddings = self.add_weight(
            "modality_embeddings", [len(self.modality_dims), self.width],
            initializer=keras.initializers.TruncatedNormal(stddev=0.02, seed=self.seed))
        super().build(input_shape)

    def _check(self, tokens, masks):
        unknown = sorted(set(tokens) - set(self.modality_dims))
        if unknown:
            raise ValueError(f"Unknown modalities {unknown}; this FusionQFormer fuses "
                             f"{list(self.modality_dims)}.")
        if not tokens:
            raise ValueError("FusionQFormer needs at least one modality in `tokens`.")
        for name, value in tokens.items():
            if name not in masks:
                raise ValueError(f"Modality '{name}' has tokens but no mask.")
            if value.shape.rank != 3 or value.shape[-1] != self.modality_dims[name]:
                raise ValueError(
                    f"Modality '{name}' tokens must have shape [batch, tokens, "
                    f"{self.modality_dims[name]}], got {value.shape}.")
            if masks[name].shape.rank != 2:
                raise ValueError(f"Modality '{name}' mask must have shape [batch, tokens], "
                                 f"got {masks[name].shape}.")

    @property
    def shares_fusion(self) -> bool:
        """Whether the adapted (history) branch differs from the target branch only in the
        output projection (`lora_scope="output"`): `fuse` then gives both branches the same
        values, and one pass per item can serve both (see `project`)."""
        return self.lora_scope == "output"

    def call(self, tokens, masks, training=None, adapter=False):
        adapter = _adapter_mode(adapter, training)
        queries = self.fuse(tokens, masks, training=training, adapter=adapter)
        return queries, self.project(queries, adapter=adapter)

    def fuse(self, tokens, masks, training=None, adapter=False):
        """Everything before the output projection: the normalised query outputs
        `[B, num_queries, width]`. Arguments as in `call` (the layer must be built)."""
        self._check(tokens, masks)
        a = dict(adapter=_adapter_mode(adapter, training))
        parts, part_masks = [], []
        for index, name in enumerate(self.modality_dims):
            if name not in tokens:
                continue
            mask = tf.cast(masks[name], tf.bool)
            if training and self.modality_dropout > 0:
                keep = tf.random.uniform(tf.shape(mask)[:1]) >= self.modality_dropout
                mask = tf.logical_and(mask, keep[:, None])
            x = self.projections[name](tf.cast(tokens[name], self.compute_dtype), **a)
            embedding = self.modality_embeddings[index]
            if a["adapter"]:
                embedding = tf.stop_gradient(embedding)
            parts.append(x + tf.cast(embedding, x.dtype))
            part_masks.append(mask)
        token_seq = self.token_norm(tf.concat(parts, axis=1), **a)
        token_mask = tf.concat(part_masks, axis=1)
        batch = tf.shape(token_seq)[0]
        queries = tf.stop_gradient(self.queries) if a["adapter"] else self.queries
        q = tf.tile(tf.cast(queries, token_seq.dtype)[None], [batch, 1, 1])
        for i, block in enumerate(self.blocks):
            q, token_seq = block(q, token_seq, token_mask,
                                 queries_only=i == self.num_layers - 1, **a)
        return self.output_norm(q, **a)

    def project(self, queries, training=None, adapter=False):
        """The content embedding `[B, output_dim]` of `fuse`'s query outputs `[B,
        num_queries, width]`: the output projection, with its adapter when `adapter`."""
        batch = tf.shape(queries)[0]
        flat = tf.reshape(queries, [batch, self.num_queries * self.width])
        return self.output_projection(flat, adapter=_adapter_mode(adapter, training))

    def adapter_variables(self):
        """The LoRA `A`, `B` variables of every projection (what the history branch trains)."""
        return [v for v in self.trainable_variables if "lora_" in v.name]

    def get_config(self):
        config = super().get_config()
        config.update(
            modality_dims=dict(self.modality_dims), num_queries=self.num_queries,
            num_layers=self.num_layers, width=self.width, num_heads=self.num_heads,
            attention=self.attention, ffn_multiplier=self.ffn_multiplier,
            output_dim=self.output_dim, modality_dropout=self.modality_dropout,
            lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, lora_scope=self.lora_scope,
            seed=self.seed)
        return config


def _adapter_mode(adapter, training):
    """At inference (`training=False`) an adapted branch runs each projection with its
    adapter merged into the base kernel (one matmul); otherwise `adapter` as given."""
    return "merged" if adapter and training is False else adapter
