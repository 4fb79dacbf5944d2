"""Semantic-id features: an item's RQ codes as trainable ID features (QARM, arXiv 2411.11739).

Each catalog item has `L` codes, coarse to fine (`em3_tf.quantization`). Items with similar
content share code prefixes, so an item that never had an interaction still gets embeddings
trained by the warm items that share its prefixes (semantic-id features beat random-hash ids
most on cold start, e.g. arXiv 2306.08121).
"""

import numpy as np

from em3_tf._tf import keras, tf


class SemanticIds(keras.layers.Layer):
    """Item id -> codes -> embedding, and the history's code-match features.

    The embedding of codes `(c_1, ..., c_L)` is

        e = sum_l E_l[c_l] + sum_{l >= 2} P_l[hash(c_1, ..., c_l) mod B]

    with one table `E_l` of `codebook_size + 1` rows per level (the last row: an item with no
    codes, i.e. not in the catalog) and hashed prefix n-gram tables `P_l` of `B` rows. The
    code-match feature of level `l` is the share of the user's history items whose first `l`
    codes equal the target's.

    Args:
      item_keys: int64 `[N]` catalog item keys (`em3_tf.features.id_keys`).
      codes: int `[N, L]` codes of those items, in `[0, codebook_size)`.
      codebook_size: centroids per level.
      dim: embedding size.
      prefix_buckets: rows `B` of each hashed prefix table.

    Call arguments:
      target: int64 item keys `[B]`; history: `[U, H]` keys; mask: bool `[U, H]`;
      user_index: optional int `[B]`, the history row of each target (default: the same row).

    Returns:
      `(embedding [B, dim], match [B, L])`; `match` is None without `history`.

    Example:
    >>> layer = SemanticIds(np.array([3, 7]), np.array([[0, 1], [0, 2]]), 4, 8)
    >>> emb, match = layer(tf.constant([7]), tf.constant([[3]]), tf.constant([[True]]))
    >>> match.numpy()   # [[1., 0.]]: item 3 shares item 7's first code, not its second
    """

    def __init__(self, item_keys, codes, codebook_size, dim, prefix_buckets=4096, **kwargs):
        super().__init__(**kwargs)
        keys, codes = np.asarray(item_keys, np.int64), np.asarray(codes, np.int64)
        if codes.ndim != 2 or len(codes) != len(keys):
            raise ValueError(f"`codes` must be [len(item_keys), levels] = [{len(keys)}, L], "
                             f"got {codes.shape}.")
        if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
            raise ValueError(f"`codes` must be in [0, codebook_size={codebook_size}).")
        self.levels, self.codebook_size = int(codes.shape[1]), int(codebook_size)
        self.dim, self.prefix_buckets = int(dim), int(prefix_buckets)
        self.lookup = keras.layers.IntegerLookup(vocabulary=keys, num_oov_indices=1,
                                                 mask_token=None, name="code_row")
        unknown = np.full([1, self.levels], self.codebook_size, np.int64)
        self.codes = tf.Variable(np.concatenate([unknown, codes]), trainable=False,
                                 name="codes")  # row 0: not in the catalog
        self.level_tables = [keras.layers.Embedding(self.codebook_size + 1, self.dim,
                                                    name=f"level_{l}")
                             for l in range(self.levels)]
        self.prefix_tables = [keras.layers.Embedding(self.prefix_buckets, self.dim,
                                                     name=f"prefix_{l}")
                              for l in range(1, self.levels)]

    def codes_of(self, ids):
        """Codes `ids.shape + [L]` (int64); `codebook_size` for an item not in the catalog."""
        return tf.gather(self.codes, self.lookup(ids))

    def embed(self, codes):
        """Embeddings `codes.shape[:-1] + [dim]` of codes `[..., L]`."""
        out = tf.add_n([table(codes[..., l]) for l, table in enumerate(self.level_tables)])
        for l, table in enumerate(self.prefix_tables, start=1):
            prefix = tf.strings.reduce_join(tf.strings.as_string(codes[..., :l + 1]), axis=-1,
                                            separator="/")
            out += table(tf.strings.to_hash_bucket_fast(prefix, self.prefix_buckets))
        return out

    def call(self, target, history=None, mask=None, user_index=None):
        codes = self.codes_of(target)
        embedding = self.embed(codes)
        if history is None:
            return embedding, None
        history_codes = self.codes_of(history)  # [U, H, L]
        if user_index is not None:
            history_codes, mask = (tf.gather(history_codes, user_index),
                                   tf.gather(mask, user_index))
        same = tf.cast(tf.equal(history_codes, codes[:, None, :]), tf.float32)
        prefix = tf.math.cumprod(same, axis=-1)  # first l codes all equal
        weight = tf.cast(mask, tf.float32)[..., None]
        match = tf.reduce_sum(prefix * weight, 1) / tf.maximum(tf.reduce_sum(weight, 1), 1.0)
        return embedding, match
