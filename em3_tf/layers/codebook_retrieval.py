"""Codebook retrieval of the relevant part of a long history (SEMINAR, arXiv 2407.10714).

EM3's history branch costs one LoRA Q-Former pass per history item. With retrieval, a cheap
search first keeps the `K` history items most relevant to the target, and the exact content
attention runs over those `K` only.
"""

from em3_tf._tf import keras, tf
from em3_tf.quantization.pq import ProductQuantizer, asymmetric_scores, lookup_tables


class CodebookRetrieval(keras.layers.Layer):
    """Top-`K` history positions by product-quantized relevance to the target.

    Every catalog row's history-branch content embedding is stored as `M` PQ codes. The
    relevance of history item `h` to a target with content embedding `t` is the asymmetric
    PQ estimate of `t . h` (`em3_tf.quantization.pq`): one `[M, C]` table per target and `M`
    lookups per history item, no Q-Former pass. `fit` (re)computes codebooks and codes from
    the current embeddings; `EM3Ranker` calls it at each epoch start (`RefitCodebooks`) and
    at export, and the codes travel with the SavedModel.

    Args:
      num_rows: catalog rows (row 0 the unknown item).
      dim: content embedding size (divisible by `num_subspaces`).
      k: history items kept.
      num_subspaces, num_centroids: `M` and `C`.

    Call arguments:
      target: float `[B, dim]` target content embeddings; rows: int `[B, L]` catalog rows of
      the history; mask: bool `[B, L]`.

    Returns:
      `(positions [B, K] int32, scores [B, L])`: the kept positions (most relevant first;
      padding only where a history has fewer than `K` items) and every position's relevance
      (masked positions at the dtype's minimum).
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
        """Fits the codebooks on `embeddings` `[num_rows, dim]` (row 0 left out) and encodes
        every row."""
        embeddings = tf.convert_to_tensor(embeddings, tf.float32)
        self.quantizer.fit(embeddings[1:])
        self.codebooks.assign(self.quantizer.codebooks)
        self.codes.assign(self.quantizer.encode(embeddings))

    def scores(self, target, rows, mask):
        tables = lookup_tables(target, self.codebooks)  # the exported codebooks
        scores = asymmetric_scores(tables, tf.gather(self.codes, rows))
        return tf.where(mask, scores, scores.dtype.min)

    def call(self, target, rows, mask):
        scores = self.scores(target, rows, mask)
        k = tf.minimum(self.k, tf.shape(scores)[1])
        return tf.math.top_k(scores, k).indices, scores


class RefitCodebooks(keras.callbacks.Callback):
    """Refits `EM3Ranker`'s retrieval codebooks on the current content embeddings every
    `every` epochs (at the epoch's start). `EM3Ranker.fit` adds it by itself."""

    def __init__(self, every: int = 1):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"`every` must be >= 1, got {every!r}.")
        self.every = int(every)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch % self.every == 0:
            self.model.refit_codebooks()
