"""Content-ID-Contrastive (CIC) learning: align item content embeddings with item ID embeddings."""

from em3_tf._tf import keras, tf


class ContentIdContrastive(keras.layers.Layer):
    """Bidirectional InfoNCE between projected content and ID embeddings of the same items.

    Both embeddings go through a small projection head and are L2-normalised. Content of item
    `i` must pick out the ID embedding of item `i` among the batch's ID embeddings (and `K`
    sampled negatives, if given), and the other way round; logits are cosine similarities
    divided by `temperature`. Other rows of the same item are not negatives: they are masked
    out (as `tfrs.tasks.Retrieval`'s accidental-hit removal does), so duplicates in a batch
    give no false negatives. It is computed here, in float32, rather than with two TFRS
    Retrieval tasks: those create helper layers at call time under the global dtype policy and
    break under mixed precision. The loss is the mean of both directions, averaged over the batch:

        L = 1/2 (CE(softmax(c_i . d_j / t), i) + CE(softmax(d_i . c_j / t), i))

    Args:
      projection_dim: output size of both projection heads.
      temperature: softmax temperature (EM3 default 0.1).

    Call arguments:
      content: `[B, Dc]` item content embeddings.
      ids: `[B, Di]` item ID embeddings.
      item_ids: `[B]` item identifiers (any dtype), used to mask duplicates.
      negative_content, negative_ids: optional `[K, Dc]`, `[K, Di]` sampled negatives.
      negative_item_ids: `[K]` their identifiers.
      global_batch_size: divisor of the summed loss (defaults to `B`); pass the global batch
        size under a `tf.distribute` strategy.

    Returns:
      Scalar loss.

    Example:
    >>> cic = ContentIdContrastive(projection_dim=16)
    >>> loss = cic(tf.random.normal([8, 32]), tf.random.normal([8, 24]), tf.range(8))
    """

    def __init__(self, projection_dim=32, temperature=0.1, **kwargs):
        super().__init__(**kwargs)
        if int(projection_dim) < 1:
            raise ValueError(f"`projection_dim` must be >= 1, got {projection_dim!r}.")
        if float(temperature) <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
        self.projection_dim = int(projection_dim)
        self.temperature = float(temperature)
        self.content_head = keras.layers.Dense(self.projection_dim, name="content_head")
        self.id_head = keras.layers.Dense(self.projection_dim, name="id_head")
    def project(self, content, ids):
        """The normalised `(content, id)` projections, `[B, projection_dim]` each, float32
        (also under a mixed-precision policy: the softmax over cosine / temperature needs it)."""
        return (tf.math.l2_normalize(tf.cast(self.content_head(content), tf.float32), axis=-1),
                tf.math.l2_normalize(tf.cast(self.id_head(ids), tf.float32), axis=-1))

    def call(self, content, ids, item_ids, negative_content=None, negative_ids=None,
             negative_item_ids=None, global_batch_size=None):
        c, d = self.project(content, ids)
        candidate_ids = item_ids
        c_candidates, d_candidates = c, d
        if negative_item_ids is not None:
            nc, nd = self.project(negative_content, negative_ids)
            c_candidates = tf.concat([c, nc], axis=0)
            d_candidates = tf.concat([d, nd], axis=0)
            candidate_ids = tf.concat([item_ids, negative_item_ids], axis=0)
        if global_batch_size is None:
            global_batch_size = tf.shape(c)[0]
        total = (self._info_nce(c, d_candidates, item_ids, candidate_ids)
                 + self._info_nce(d, c_candidates, item_ids, candidate_ids))
        return 0.5 * total / tf.cast(global_batch_size, total.dtype)

    def _info_nce(self, queries, candidates, query_ids, candidate_ids):
        """Summed softmax cross-entropy of query `i` against candidate `i`, same-item
        candidates other than `i` removed."""
        logits = tf.matmul(queries, candidates, transpose_b=True) / self.temperature
        positives = tf.eye(tf.shape(queries)[0], tf.shape(candidates)[0], dtype=tf.bool)
        same_item = tf.equal(tf.expand_dims(query_ids, 1), tf.expand_dims(candidate_ids, 0))
        logits = tf.where(same_item & ~positives, tf.constant(-1e9, logits.dtype), logits)
        return tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(
            tf.cast(positives, logits.dtype), logits))

    def get_config(self):
        config = super().get_config()
        config.update(projection_dim=self.projection_dim, temperature=self.temperature)
        return config
