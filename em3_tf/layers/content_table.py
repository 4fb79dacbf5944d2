"""Pre-computed item content embeddings, looked up by raw item id: what a served model reads.

Once a model is trained, an item's content embedding does not change between requests, so
the export computes it once per catalog item instead of re-running the Fusion-Q-Former over
every candidate and every history entry of every request.
"""

import numpy as np

from em3_tf._tf import keras, tf


class ContentTable(keras.layers.Layer):
    """Item content embeddings of both branches, keyed by raw item id.

    Row 0 of each table is the embedding of an unknown item (all modalities missing), the
    same one the live encoder gives an id that is not in the catalog; row `k + 1` belongs to
    `item_ids[k]`. The ids are kept sorted and looked up with a binary search, so the
    variables can grow (`assign` of longer values) when items are added to an exported model.

    Args:
      item_ids: int64 `[N]` catalog item ids (any order; stored sorted).
      target: float `[N + 1, D]` target-branch embeddings (row 0 the unknown item), rows in
        the order of `item_ids`.
      history: float `[N + 1, D]` history-branch embeddings (e.g. the LoRA adapter's), or
        None when the model has no history content.

    Call arguments:
      ids: int64 item ids of any shape (`-1` padding maps to the unknown row).
      branch: `"target"` or `"history"`.

    Returns:
      `ids.shape + [D]` float32 embeddings.

    Example:
    >>> table = ContentTable(np.array([7, 3]), np.random.rand(3, 4), None)
    >>> table(tf.constant([[3, 9]]), "target").shape   # [1, 2, 4]; 9 gets row 0
    """

    def __init__(self, item_ids, target, history=None, **kwargs):
        super().__init__(**kwargs)
        ids, target = np.asarray(item_ids, np.int64), np.asarray(target, np.float32)
        if ids.ndim != 1 or len(np.unique(ids)) != len(ids):
            raise ValueError(f"`item_ids` must be 1-D and unique, got shape {ids.shape}.")
        if target.ndim != 2 or len(target) != len(ids) + 1:
            raise ValueError(f"`target` must be [len(item_ids) + 1, dim] = [{len(ids) + 1}, "
                             f"dim], got {target.shape}.")
        if history is not None and np.shape(history) != target.shape:
            raise ValueError(f"`history` must have `target`'s shape {target.shape}, got "
                             f"{np.shape(history)}.")
        self.dim = int(target.shape[1])
        self.item_ids = tf.Variable(np.zeros([0], np.int64), trainable=False,
                                    shape=tf.TensorShape([None]), name="item_ids")
        self.tables = {name: tf.Variable(np.zeros([0, self.dim], np.float32), trainable=False,
                                         shape=tf.TensorShape([None, self.dim]), name=name)
                       for name in (("target",) if history is None else ("target", "history"))}
        self.assign(ids, target, history)

    def assign(self, item_ids, target, history=None):
        """Replaces the contents (same arguments as the constructor; any number of items)."""
        if (history is None) != ("history" not in self.tables):
            raise ValueError("`history` must be given exactly when the table has that branch.")
        ids, tables = sorted_by_id(item_ids, {"target": target, "history": history})
        self.item_ids.assign(ids)
        for name, value in tables.items():
            self.tables[name].assign(value)

    def rows_of(self, ids):
        """Table rows (int32) of `ids` of any shape; 0 for ids not in the table."""
        ids = tf.cast(ids, tf.int64)
        flat = tf.reshape(ids, [-1])
        position = tf.searchsorted(self.item_ids, flat, side="left", out_type=tf.int32)
        size = tf.shape(self.item_ids, out_type=tf.int32)[0]
        clipped = tf.minimum(position, tf.maximum(size - 1, 0))
        found = tf.logical_and(position < size,
                               tf.equal(tf.gather(self.item_ids, clipped), flat))
        rows = tf.where(found, position + 1, tf.zeros_like(position))
        return tf.reshape(rows, tf.shape(ids))

    def call(self, ids, branch="target"):
        if branch not in self.tables:
            raise ValueError(f"`branch` must be one of {sorted(self.tables)}, got {branch!r}.")
        return tf.gather(self.tables[branch], self.rows_of(ids))


def sorted_by_id(item_ids, tables):
    """`(ids, tables)` with `item_ids` sorted and the rows of each `[len(ids) + 1, D]` table
    (row 0 the unknown item, then one row per id; None tables are skipped) in that order."""
    ids = np.asarray(item_ids, np.int64)
    order = np.argsort(ids, kind="stable")
    rows = np.concatenate([[0], order + 1])
    return ids[order], {name: np.asarray(value, np.float32)[rows]
                        for name, value in tables.items() if value is not None}
