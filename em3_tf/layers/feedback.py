"""Feedback embeddings of behaviour-sequence entries, and the user's running statistics."""

from em3_tf._tf import keras, tf


class FeedbackEmbedding(keras.layers.Layer):
    """Embeds what a user thought of each history entry, to add to that entry's embedding.

    `e = E_label[y] + E_rating[r] + E_time[bucket(s)]`, with
    `bucket(s) = min(floor(log2(1 + s / 60)), num_time_buckets - 1)` (minutes on a log scale).
    Added to the history's ID or content embeddings before target attention, it makes the
    attention label-aware (as in industrial rankers' per-action sequences): "liked items like
    this one" and "disliked items like this one" pool differently.

    Args:
      dim: output size (that of the history embeddings it is added to).
      max_rating: ratings are clipped to `[0, max_rating]` (0: no rating in the data).
      num_time_buckets: log-scale buckets of the elapsed time.

    Call arguments:
      labels, ratings, seconds_ago: int `[B, L]`; padding (`-1`) is clipped to 0, the caller
        masks padded positions.

    Returns:
      `[B, L, dim]`.

    Example:
    >>> layer = FeedbackEmbedding(8)
    >>> e = layer(tf.constant([[1, 0]]), tf.constant([[5, 2]]), tf.constant([[60, 86400]]))
    """

    def __init__(self, dim, max_rating=10, num_time_buckets=24, **kwargs):
        super().__init__(**kwargs)
        for name, value, low in (("dim", dim, 1), ("max_rating", max_rating, 0),
                                 ("num_time_buckets", num_time_buckets, 1)):
            if int(value) < low:
                raise ValueError(f"`{name}` must be >= {low}, got {value!r}.")
        self.dim, self.max_rating = int(dim), int(max_rating)
        self.num_time_buckets = int(num_time_buckets)
        self.label_embedding = keras.layers.Embedding(2, self.dim, name="label")
        self.rating_embedding = keras.layers.Embedding(self.max_rating + 1, self.dim,
                                                       name="rating")
        self.time_embedding = keras.layers.Embedding(self.num_time_buckets, self.dim,
                                                     name="time")

    def time_bucket(self, seconds_ago):
        minutes = tf.cast(tf.maximum(seconds_ago, 0), tf.float32) / 60.0
        bucket = tf.cast(tf.math.floor(tf.math.log(1.0 + minutes) / tf.math.log(2.0)), tf.int32)
        return tf.minimum(bucket, self.num_time_buckets - 1)

    def call(self, labels, ratings, seconds_ago):
        labels = tf.clip_by_value(tf.cast(labels, tf.int32), 0, 1)
        ratings = tf.clip_by_value(tf.cast(ratings, tf.int32), 0, self.max_rating)
        return (self.label_embedding(labels) + self.rating_embedding(ratings)
                + self.time_embedding(self.time_bucket(seconds_ago)))

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, max_rating=self.max_rating,
                      num_time_buckets=self.num_time_buckets)
        return config


def user_statistics(count, positives, prior_rate=0.5, prior_count=5.0):
    """Dense running statistics `[B, 2]`: `log(1 + n)` and the smoothed positive rate
    `(p + prior_count * prior_rate) / (n + prior_count)` of `n` earlier interactions, `p` of
    them positive (both int `[B]`)."""
    count = tf.cast(count, tf.float32)
    positives = tf.cast(positives, tf.float32)
    rate = (positives + prior_count * prior_rate) / (count + prior_count)
    return tf.stack([tf.math.log1p(count), rate], axis=-1)
