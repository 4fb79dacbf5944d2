"""RQ-KMeans semantic ids (QARM, arXiv 2411.11739): residual k-means, level by level.

Level 1 clusters the aligned item embeddings; level l clusters what the levels before it left
unexplained (the residual). An item's code is its `L` centroid indices, coarse to fine, so
items with similar content share code prefixes: a cold item's codes come from its content
alone, and it inherits the trained embeddings of the warm items whose prefixes it shares.

    rq = ResidualQuantizer(levels=3, codebook_size=64).fit(embeddings)   # [N, D]
    codes = rq.encode(embeddings)          # [N, 3] int32
    rq.residual_errors                     # mean squared residual after each level (falls)
    collision_rate(codes), utilisation(codes, 64)

And VQ codes (QARM's other kind): `nearest_items(embeddings, k)`, the ids of each item's k
nearest items in the aligned space.
"""

from typing import List

import numpy as np

from em3_tf._tf import tf
from em3_tf.config import MAX_LEVELS
from em3_tf.quantization.kmeans import assign, kmeans, squared_distances


class ResidualQuantizer:
    """`levels` codebooks of `codebook_size` centroids each, fit by residual k-means.

    Args:
      levels: number of code levels (1 to `MAX_LEVELS`).
      codebook_size: centroids per level (at least 2; at most the number of items fit).
      iterations, seed: k-means iterations and seed (level l uses `seed + l`).

    Attributes (after `fit`):
      codebooks: float32 `[levels, codebook_size, D]`.
      residual_errors: mean squared norm of the residual after each level, `[levels]`.
    """

    def __init__(self, levels=3, codebook_size=64, iterations=25, seed=0):
        if not 1 <= int(levels) <= MAX_LEVELS:
            raise ValueError(f"`levels` must be in [1, {MAX_LEVELS}], got {levels!r}.")
        if int(codebook_size) < 2:
            raise ValueError(f"`codebook_size` must be at least 2, got {codebook_size!r}.")
        self.levels, self.codebook_size = int(levels), int(codebook_size)
        self.iterations, self.seed = int(iterations), int(seed)
        self.codebooks = None
        self.residual_errors: List[float] = []

    def fit(self, embeddings) -> "ResidualQuantizer":
        x = tf.convert_to_tensor(embeddings, tf.float32)
        if x.shape.rank != 2:
            raise ValueError(f"`embeddings` must be [items, dim], got shape {x.shape}.")
        if self.codebook_size > int(x.shape[0]):
            raise ValueError(f"`codebook_size` {self.codebook_size} is larger than the catalog "
                             f"({int(x.shape[0])} items).")
        residual, books, errors = x, [], []
        for level in range(self.levels):
            centroids = kmeans(residual, self.codebook_size, self.iterations, self.seed + level)
            residual = residual - tf.gather(centroids, assign(residual, centroids))
            books.append(centroids)
            errors.append(float(tf.reduce_mean(tf.reduce_sum(residual * residual, 1))))
        self.codebooks, self.residual_errors = tf.stack(books), errors
        return self

    def encode(self, embeddings):
        """Codes `[N, levels]` (int32) of `embeddings` `[N, D]`."""
        if self.codebooks is None:
            raise ValueError("ResidualQuantizer.encode before fit.")
        residual, codes = tf.convert_to_tensor(embeddings, tf.float32), []
        for level in range(self.levels):
            code = assign(residual, self.codebooks[level])
            residual = residual - tf.gather(self.codebooks[level], code)
            codes.append(code)
        return tf.stack(codes, axis=1)

    def decode(self, codes):
        """The reconstruction `[N, D]`: the sum of each level's centroid."""
        return tf.add_n([tf.gather(self.codebooks[level], codes[:, level])
                         for level in range(self.levels)])


def collision_rate(codes) -> float:
    """Share of items whose full code another item also has."""
    codes = np.asarray(codes)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())


def utilisation(codes, codebook_size: int) -> List[float]:
    """Per level, the share of the `codebook_size` centroids that some item uses."""
    codes = np.asarray(codes)
    return [len(np.unique(codes[:, level])) / codebook_size for level in range(codes.shape[1])]


def nearest_items(embeddings, k: int):
    """VQ codes: `[N, k]` row indices of each item's `k` nearest other items (squared
    Euclidean distance in the aligned space)."""
    x = tf.convert_to_tensor(embeddings, tf.float32)
    if not 1 <= k < int(x.shape[0]):
        raise ValueError(f"`k` must be in [1, {int(x.shape[0]) - 1}], got {k}.")
    distances = squared_distances(x, x) + tf.eye(tf.shape(x)[0]) * 1e30  # not itself
    return tf.math.top_k(-distances, k).indices
