"""Product quantization with asymmetric scores (SEMINAR, arXiv 2407.10714).

An embedding `[D]` is cut into `M` sub-vectors of `D / M` dims; each sub-space has its own
`C` k-means centroids, and an item is stored as its `M` centroid indices. The inner product of
a full-precision query `q` with a stored item `x` is approximated without decoding `x`:

    q . x  ~=  sum_m  q_m . c_m[code_m(x)]  =  sum_m  T[m, code_m(x)],   T = q_m . c_m  [M, C]

so scoring L history items against a target costs one `[M, C]` table and L * M lookups.

    pq = ProductQuantizer(num_subspaces=4, num_centroids=16).fit(items)    # [N, D]
    codes = pq.encode(items)                       # [N, M] int32
    scores = pq.asymmetric_scores(queries, codes)  # [B, N]
"""

import numpy as np

from em3_tf._tf import tf
from em3_tf.quantization.kmeans import assign, kmeans


class ProductQuantizer:
    """`num_subspaces` x `num_centroids` product quantizer.

    Args:
      num_subspaces: M, must divide the embedding dim.
      num_centroids: C, centroids per sub-space (at most the number of items fit).
      iterations, seed: k-means settings (sub-space m uses `seed + m`).

    Attributes (after `fit`): `codebooks` float32 `[M, C, D / M]`.
    """

    def __init__(self, num_subspaces=4, num_centroids=16, iterations=25, seed=0):
        if int(num_subspaces) < 1 or int(num_centroids) < 2:
            raise ValueError(f"`num_subspaces` must be >= 1 and `num_centroids` >= 2, got "
                             f"{num_subspaces!r} and {num_centroids!r}.")
        self.num_subspaces, self.num_centroids = int(num_subspaces), int(num_centroids)
        self.iterations, self.seed = int(iterations), int(seed)
        self.codebooks = None

    def _split(self, x):
        x = tf.convert_to_tensor(x, tf.float32)
        dim = int(x.shape[-1])
        if dim % self.num_subspaces:
            raise ValueError(f"The embedding dim {dim} is not divisible by `num_subspaces` "
                             f"{self.num_subspaces}.")
        return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [self.num_subspaces,
                                                           dim // self.num_subspaces]], 0))

    def fit(self, embeddings) -> "ProductQuantizer":
        parts = self._split(embeddings)  # [N, M, d]
        if self.num_centroids > int(parts.shape[0]):
            raise ValueError(f"`num_centroids` {self.num_centroids} is larger than the catalog "
                             f"({int(parts.shape[0])} items).")
        self.codebooks = tf.stack([kmeans(parts[:, m], self.num_centroids, self.iterations,
                                          self.seed + m) for m in range(self.num_subspaces)])
        return self

    def encode(self, embeddings):
        """Codes `[N, M]` (int32)."""
        parts = self._split(embeddings)
        return tf.stack([assign(parts[:, m], self.codebooks[m])
                         for m in range(self.num_subspaces)], axis=1)

    def lookup_tables(self, queries):
        """`[B, M, C]`: each query sub-vector's inner product with each centroid."""
        return lookup_tables(queries, self.codebooks)


def lookup_tables(queries, codebooks):
    """`[B, M, C]` tables of `queries` `[B, D]` against `codebooks` `[M, C, D / M]`: each
    query sub-vector's inner product with each centroid of its sub-space."""
    queries = tf.convert_to_tensor(queries, tf.float32)
    m = tf.shape(codebooks)[0]
    parts = tf.reshape(queries, [tf.shape(queries)[0], m, -1])
    return tf.einsum("bmd,mcd->bmc", parts, tf.cast(codebooks, tf.float32))


def asymmetric_scores(tables, codes):
    """Approximate inner products of the queries behind `tables` `[B, M, C]` with items given
    by their codes: `[B, L, M]` (each query its own items) -> `[B, L]`, or `[N, M]` (items
    shared by every query) -> `[B, N]`."""
    tables = tf.convert_to_tensor(tables, tf.float32)
    codes = tf.convert_to_tensor(codes, tf.int32)
    m, c = tf.shape(tables)[1], tf.shape(tables)[2]
    flat = tf.reshape(tables, [tf.shape(tables)[0], -1])  # [B, M * C]
    index = codes + tf.range(m) * c  # the code of sub-space j is column j * C + code
    if codes.shape.rank == 2:
        return tf.reduce_sum(tf.gather(flat, index, axis=1), axis=-1)
    return tf.reduce_sum(tf.gather(flat, index, batch_dims=1), axis=-1)


def reference_scores(tables, codes) -> np.ndarray:
    """NumPy reference of `asymmetric_scores` for `[B, L, M]` codes (for tests)."""
    tables, codes = np.asarray(tables), np.asarray(codes)
    b, l, m = codes.shape
    return np.array([[sum(tables[i, j, codes[i, k, j]] for j in range(m)) for k in range(l)]
                     for i in range(b)])
