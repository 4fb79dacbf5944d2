"""Codebook retrieval of the relevant part of a long history (SEMINAR, arXiv 2407.10714).

EM3's history branch costs one LoRA Q-Former pass per history item. With retrieval, a cheap
search first keeps the `K` history items most relevant to the target, and the exact content
attention runs over those `K` only.
"""

from em3_tf._tf import keras, tf
from em3_tf.quantization.pq import ProductQuantizer, asymmetric_scores, lookup_tables


class CodebookRetrieval(keras.layers.Layer):
    """Top-`K` history positions by product-quantized attention logits.

    The content attention scores history entry `h` against target `t` with a dot product,
    `s(t, h) = q(t) . k(h)` (`TargetAttention(scorer="dot")`). Every catalog row's attention
    key `k(h)` is stored as `M` PQ codes, and `s` is estimated without a Q-Former pass:

        s(t, h) ~= sum_m  q_m(t) . c_m[code_m(h)]  +  bias(h)

    one `[M, C]` table per target and `M` lookups per history entry
    (`em3_tf.quantization.pq`); `bias` is the exact remainder of the logit that does not
    depend on the item's content (the key of the entry's feedback embedding). `fit`
    (re)computes codebooks and codes from the current keys; `EM3Ranker` calls it at the
    `RefitCodebooks` cadence and at export, and the codes travel with the SavedModel.

    Args:
      num_rows: catalog rows (row 0 the unknown item).
      dim: key size (divisible by `num_subspaces`).
      k: history items kept.
      num_subspaces, num_centroids: `M` and `C`.
      seed: k-means seed.

    Call arguments:
      query: float `[B, dim]` attention queries `q(t)`; rows: int `[B, L]` catalog rows of
      the history; mask: bool `[B, L]`; bias: optional float `[B, L]` added to the estimates.

    Returns:
      `(positions [B, K] int32, scores [B, L])`: the kept positions (most relevant first;
      padding only where a history has fewer than `K` items) and every position's estimated
      logit (masked positions at the dtype's minimum).

    Example:
    >>> layer = CodebookRetrieval(num_rows=101, dim=8, k=5, num_subspaces=2, num_centroids=4)
    >>> layer.fit(tf.random.normal([101, 8]))
    >>> positions, scores = layer(tf.random.normal([3, 8]),
    ...                           tf.random.uniform([3, 20], 1, 101, tf.int32),
    ...                           tf.ones([3, 20], tf.bool))
    """

    def __init__(self, num_rows, dim, k, num_subspaces=4, num_centroids=16, seed=0, **kwargs):
        super().__init__(**kwargs)
        if int(k) < 1:
            raise ValueError(f"`k` must be >= 1, got {k!r}.")
        if int(dim) % int(num_subspaces):
            raise ValueError(f"`dim` {dim} must be divisible by `num_subspaces` "
                             f"{num_subspaces}.")
        if int(num_centroids) > int(num_rows) - 1:
            raise ValueError(f"`num_centroids` {num_centroids} is larger than the catalog "
                             f"({int(num_rows) - 1} items).")
        self.k, self.seed = int(k), int(seed)
        self.quantizer = ProductQuantizer(num_subspaces, num_centroids, seed=seed)
        self.codebooks = tf.Variable(
            tf.zeros([num_subspaces, num_centroids, int(dim) // int(num_subspaces)]),
            trainable=False, name="codebooks")
        self.codes = tf.Variable(tf.zeros([int(num_rows), int(num_subspaces)], tf.int32),
                                 trainable=False, name="codes")

    def fit(self, embeddings):
        """Fits the codebooks on the keys `embeddings` `[num_rows, dim]` (row 0 left out)
        and encodes every row."""
        embeddings = tf.convert_to_tensor(embeddings, tf.float32)
        self.quantizer.fit(embeddings[1:])
        self.codebooks.assign(self.quantizer.codebooks)
        self.codes.assign(self.quantizer.encode(embeddings))

    def scores(self, query, rows, mask, bias=None):
        tables = lookup_tables(query, self.codebooks)  # the exported codebooks
        scores = asymmetric_scores(tables, tf.gather(self.codes, rows))
        if bias is not None:
            scores += tf.cast(bias, scores.dtype)
        return tf.where(mask, scores, scores.dtype.min)

    def call(self, query, rows, mask, bias=None):
        scores = self.scores(query, rows, mask, bias)
        k = tf.minimum(self.k, tf.shape(scores)[1])
        return tf.math.top_k(scores, k).indices, scores


def recall_at_k(positions, scores) -> float:
    """Share of the exact top `K` positions of `scores` `[B, L]` found among `positions`
    `[B, K]`, averaged over rows: how well retrieval recovers what exact attention ranks
    first. Rows need at least `K` valid positions for the measure to mean that."""
    positions = tf.convert_to_tensor(positions)
    exact = tf.math.top_k(scores, int(positions.shape[1])).indices
    hits = tf.reduce_any(exact[:, :, None] == positions[:, None, :], axis=-1)
    return float(tf.reduce_mean(tf.cast(hits, tf.float32)))


class RefitCodebooks(keras.callbacks.Callback):
    """Refits `EM3Ranker`'s retrieval codebooks on the current attention keys of every
    catalog item every `every` epochs (at the epoch's start); between refits the codes lag
    the training of the keys. `EM3Ranker.fit` adds it by itself."""

    def __init__(self, every: int = 1):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"`every` must be >= 1, got {every!r}.")
        self.every = int(every)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch % self.every == 0:
            self.model.refit_codebooks()
