"""Item content encoder: catalog lookup by item id, then the configured content extractor."""

import numpy as np

from em3_tf import features as F
from em3_tf._tf import keras, tf
from em3_tf.catalog import ItemCatalog
from em3_tf.layers.qformer import FusionQFormer
from em3_tf.layers.token_reduction import TokenReduction, masked_mean


class ItemContentEncoder(keras.layers.Layer):
    """Maps item ids to content embeddings through the item catalog.

    The catalog's token features are held in non-trainable variables (exported with the
    model), with one extra row 0 for ids not in the catalog (all modalities missing). Ids are
    mapped to rows with `tf.keras.layers.IntegerLookup`. With `token_dim` or `max_tokens`,
    the tokens are first shrunk by a frozen `TokenReduction` fitted on the catalog.

    Encoders (`kind`):
      - `"qformer"`: `FusionQFormer` over the token features (EM3).
      - `"concat_mlp"`: masked mean of each modality, concatenated, two-layer MLP.
      - `"frozen"`: the same pooled vector, stop-gradient, through one linear input
        projection: pre-extracted content with no end-to-end training of the extractor.

    Args:
      catalog: the `ItemCatalog`.
      kind: encoder kind, see above.
      output_dim: content embedding size.
      qformer_kwargs: `FusionQFormer` arguments other than `modality_dims` / `output_dim`.
      token_dim, max_tokens: `TokenReduction`'s PCA size per token and segments per
        modality (0: keep).
      modality_dropout: per-example, per-modality drop probability in training, the same for
        every kind: the Q-Former masks the dropped modality's tokens; the pooled encoders
        zero its pooled vector, as for an item that lacks the modality.

    Call arguments:
      rows: int `[n]` catalog rows (from `rows_of`).
      training: passed to the extractor (modality dropout).
      adapter: history branch: LoRA adapters over stop-gradient Q-Former weights.
      history_rows: int `[m]` catalog rows for the history branch, encoded together with
        `rows` as the target branch (see `encode_branches`).

    Returns:
      `[n, output_dim]` content embeddings; with `history_rows`, `(target [n, output_dim],
      history [m, output_dim])`.

    Example:
    >>> encoder = ItemContentEncoder(catalog, kind="qformer", output_dim=32)
    >>> embeddings = encoder(encoder.rows_of(tf.constant([3, 7])))   # [2, 32]
    """

    def __init__(self, catalog: ItemCatalog, kind="qformer", output_dim=32, qformer_kwargs=None,
                 token_dim=0, max_tokens=0, modality_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if kind not in ("qformer", "concat_mlp", "frozen"):
            raise ValueError(f"`kind` must be 'qformer', 'concat_mlp' or 'frozen', got {kind!r}.")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"`modality_dropout` must be in [0, 1), got {modality_dropout!r}.")
        self.kind = kind
        self.modality_dropout = float(modality_dropout)
        self.output_dim = int(output_dim)
        self.num_rows = len(catalog) + 1
        self.catalog_item_ids = F.keys_of(catalog.item_ids)  # row k + 1 <-> id k, as keys
        self.catalog_encoding = dict(catalog.encoding)
        self.token_shapes = {name: tuple(int(d) for d in t.shape[1:])  # raw, before reduction
                             for name, t in catalog.tokens.items()}
        self.lookup = keras.layers.IntegerLookup(
            vocabulary=self.catalog_item_ids, num_oov_indices=1, mask_token=None,
            name="catalog_row")
        self.reduction = None
        tokens, masks = catalog.tokens, catalog.masks
        if token_dim or max_tokens:
            self.reduction = TokenReduction(self.token_shapes, token_dim, max_tokens,
                                            name="token_reduction").fit(tokens, masks)
            tokens, masks = self.reduction(tokens, masks)
            tokens = {n: t.numpy() for n, t in tokens.items()}
            masks = {n: m.numpy() for n, m in masks.items()}
        self.modality_dims = {name: int(t.shape[-1]) for name, t in tokens.items()}
        self.tokens, self.masks = {}, {}
        if kind == "qformer":
            for name in tokens:  # row 0: the unknown item, no tokens
                self.tokens[name] = tf.Variable(_with_empty_row(tokens[name]), trainable=False,
                                                name=f"tokens_{name}")
                self.masks[name] = tf.Variable(_with_empty_row(masks[name]), trainable=False,
                                               name=f"mask_{name}")
            self.qformer = FusionQFormer(self.modality_dims, output_dim=output_dim,
                                         modality_dropout=modality_dropout,
                                         name="fusion_qformer", **(qformer_kwargs or {}))
        else:
            pooled = tf.concat([masked_mean(tokens[n], masks[n], axis=1) for n in tokens], 1)
            self.pooled = tf.Variable(_with_empty_row(np.asarray(pooled, np.float32)),
                                      trainable=False, name="pooled_content")
            if kind == "concat_mlp":
                self.mlp = keras.Sequential(
                    [keras.layers.Dense(2 * output_dim, activation="relu"),
                     keras.layers.Dense(output_dim)], name="concat_mlp")
            else:
                self.mlp = keras.layers.Dense(output_dim, name="frozen_content_projection")

    def rows_of(self, item_ids):
        """Catalog rows (int32) of `item_ids` (keys, see `em3_tf.features.id_keys`) of any
        shape; 0 for ids not in the catalog."""
        return tf.cast(self.lookup(item_ids), tf.int32)

    def call(self, rows, training=None, adapter=False, history_rows=None):
        if history_rows is not None:
            return self.encode_branches(rows, history_rows, training)
        if self.kind == "qformer":
            return self.qformer(*self._gathered(rows), training=training, adapter=adapter)[1]
        pooled = tf.gather(self.pooled, rows)
        if training and self.modality_dropout > 0:
            sizes = list(self.modality_dims.values())
            keep = tf.random.uniform([tf.shape(rows)[0], len(sizes)]) >= self.modality_dropout
            pooled *= tf.repeat(tf.cast(keep, pooled.dtype), sizes, axis=1)
        return self.mlp(pooled)

    @property
    def shares_fusion(self) -> bool:
        """Whether the two branches differ only in the Q-Former's output projection (see
        `FusionQFormer.shares_fusion`), so that `encode_branches` can fuse each item once."""
        return self.kind == "qformer" and self.qformer.shares_fusion

    def encode_branches(self, target_rows, history_rows, training=None):
        """`(target [n_t, output_dim], history [n_h, output_dim])`: the target branch's
        embeddings of `target_rows [n_t]` and the history (adapter) branch's of
        `history_rows [n_h]`, with the Q-Former's fusion run once per distinct row.

        The distinct target rows are fused with gradients; the other distinct rows
        stop-gradient. The history branch applies the adapted output projection to the
        stop-gradient fusion of every row it reads, so an item that is both a candidate and a
        history entry is fused once, and its history embedding still trains only the adapter.
        Distinct targets are fused once, so repeated candidates (and an item in both roles)
        share one modality-dropout draw in training. Needs `shares_fusion` (a Q-Former with
        `lora_scope="output"`).
        """
        if not self.shares_fusion:
            scope = self.qformer.lora_scope if self.kind == "qformer" else None
            raise ValueError("encode_branches needs a Q-Former encoder with "
                             f"lora_scope='output', got kind={self.kind!r}, "
                             f"lora_scope={scope!r}.")
        rows, index = tf.unique(tf.concat([target_rows, history_rows], axis=0))
        split = tf.size(target_rows)
        # tf.unique numbers first occurrences in order: the distinct targets are 0 .. k - 1
        num_targets = tf.reduce_max(tf.concat([index[:split], [-1]], axis=0)) + 1
        fused_targets, targets = self.qformer(*self._gathered(rows[:num_targets]),
                                              training=training)
        fused_rest = self.qformer.fuse(*self._gathered(rows[num_targets:]), training=training,
                                       adapter=True)
        fused = tf.stop_gradient(tf.concat([fused_targets, fused_rest], axis=0))
        history = self.qformer.project(fused, training=training, adapter=True)
        return tf.gather(targets, index[:split]), tf.gather(history, index[split:])

    def _gathered(self, rows):
        """The Q-Former's `(tokens, masks)` of catalog `rows`."""
        return ({n: tf.gather(v, rows) for n, v in self.tokens.items()},
                {n: tf.gather(v, rows) for n, v in self.masks.items()})

    def encode_tokens(self, tokens, masks, adapter=False):
        """Content embeddings `[n, output_dim]` (inference) of items given by their raw token
        features `{modality: [n, T_m, D_m]}` and masks `{modality: bool [n, T_m]}`, e.g. items
        added to the catalog after training (`em3_tf.catalog_update`)."""
        if self.reduction is not None:
            tokens, masks = self.reduction(tokens, masks)
        if self.kind == "qformer":
            return self.qformer(tokens, masks, training=False, adapter=adapter)[1]
        return self.mlp(tf.concat(
            [masked_mean(tokens[n], masks[n], axis=1) for n in self.modality_dims], axis=1))

    def encode_all(self, batch_size=1024, adapter=False):
        """Content embeddings of every catalog row, `[num_rows, output_dim]` (inference; with
        `adapter`, the history branch's)."""
        parts = [self(tf.range(start, min(start + batch_size, self.num_rows)), training=False,
                      adapter=adapter)
                 for start in range(0, self.num_rows, batch_size)]
        return tf.concat(parts, axis=0)


def _with_empty_row(values: np.ndarray) -> np.ndarray:
    """`values [N, ...]` with a zero row 0 (the unknown item) in front."""
    values = np.asarray(values)
    return np.concatenate([np.zeros_like(values[:1]), values])
