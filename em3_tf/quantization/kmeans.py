"""k-means with k-means++ seeding, in TensorFlow ops (no tf.estimator in TF 2.16).

    centroids = kmeans(x, k=64, seed=0)        # [k, D]
    codes = assign(x, centroids)               # [N] int32, nearest centroid
"""

from em3_tf._tf import tf


def squared_distances(x, centroids):
    """`[N, K]` squared Euclidean distances between rows of `x` `[N, D]` and `centroids`."""
    x, centroids = tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(centroids,
                                                                                 tf.float32)
    return tf.maximum(tf.reduce_sum(x * x, 1, keepdims=True) - 2.0 * tf.matmul(
        x, centroids, transpose_b=True) + tf.reduce_sum(centroids * centroids, 1)[None], 0.0)


def assign(x, centroids):
    """Index `[N]` (int32) of each row's nearest centroid."""
    return tf.argmin(squared_distances(x, centroids), axis=1, output_type=tf.int32)


def _plus_plus(x, k, seed):
    """k-means++ seeding: each next centroid drawn with probability ~ squared distance to the
    nearest one already chosen."""
    n = tf.shape(x)[0]
    first = tf.random.stateless_uniform([], [seed, 0], 0, n, tf.int32)
    chosen = [first]
    nearest = squared_distances(x, tf.gather(x, [first]))[:, 0]
    for step in range(1, k):
        logits = tf.math.log(nearest + 1e-12)[None]
        pick = tf.random.stateless_categorical(logits, 1, [seed, step], tf.int32)[0, 0]
        chosen.append(pick)
        nearest = tf.minimum(nearest, squared_distances(x, tf.gather(x, [pick]))[:, 0])
    return tf.gather(x, tf.stack(chosen))


def kmeans(x, k: int, iterations: int = 25, seed: int = 0):
    """`[k, D]` centroids of `x` `[N, D]` by Lloyd's algorithm from k-means++ seeds.

    An empty cluster keeps its previous centroid. Deterministic for a given `seed`.

    Raises:
      ValueError: `k` < 1, or larger than the number of rows.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    n = int(x.shape[0])
    if not 1 <= k <= n:
        raise ValueError(f"`k` must be in [1, {n}] (the number of rows to cluster), got {k}.")
    centroids = _plus_plus(x, k, seed)
    for _ in range(iterations):
        codes = assign(x, centroids)
        sums = tf.math.unsorted_segment_sum(x, codes, k)
        counts = tf.math.unsorted_segment_sum(tf.ones([n]), codes, k)[:, None]
        updated = tf.where(counts > 0, sums / tf.maximum(counts, 1.0), centroids)
        if bool(tf.reduce_all(tf.abs(updated - centroids) < 1e-7)):
            break
        centroids = updated
    return centroids
