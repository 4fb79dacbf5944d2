"""Feature names, the tf.Example spec and input checks shared by training, export and serving.

Raw features of one example (one user, one candidate item):

| feature            | dtype | shape      | meaning                                                  |
|--------------------|-------|------------|----------------------------------------------------------|
| `user_id`          | int64 | `[]`       | user identifier                                          |
| `item_id`          | int64 | `[]`       | candidate item identifier (>= 0), key into the catalog   |
| `history_item_ids` | int64 | `[<= L]`   | the user's earlier items, most recent first (>= 0)       |
| context features   | int64 | `[]`       | extra categorical features named in `EM3Config`          |
| dense features     | float | `[]`       | extra numeric features named in `EM3Config`              |
| `label`            | int64 | `[]`       | 1 = click (positive), 0 = not; absent at serving         |

In batched tensors the history is dense `[B, L]`, padded with `PAD_ID` (-1).
"""

from typing import Dict, Iterable

from em3_tf._tf import tf

USER_ID = "user_id"
ITEM_ID = "item_id"
HISTORY = "history_item_ids"
LABEL = "label"
PAD_ID = -1


class FeatureError(ValueError):
    """Raised for a missing, mistyped or mis-shaped input feature; the message names it."""


def scalar_features(context_features: Iterable[str] = ()):
    return (USER_ID, ITEM_ID) + tuple(context_features)


def example_spec(context_features: Iterable[str] = (), with_label: bool = True):
    """The `tf.io.parse_example` spec of the raw features."""
    spec = {name: tf.io.FixedLenFeature([], tf.int64)
            for name in scalar_features(context_features)}
    spec[HISTORY] = tf.io.RaggedFeature(tf.int64)
    if with_label:
        spec[LABEL] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def pad_history(history, max_history_len=None):
    """Ragged, sparse or dense `[B, <=L]` history -> dense int64 `[B, max_history_len]`.

    Padded with `PAD_ID`; the first `max_history_len` entries (the most recent) are kept.
    """
    if isinstance(history, tf.RaggedTensor):
        history = history.to_tensor(default_value=PAD_ID)
    elif isinstance(history, tf.SparseTensor):
        history = tf.sparse.to_dense(history, default_value=PAD_ID)
    history = tf.cast(history, tf.int64)
    if max_history_len is None:
        return history
    history = history[:, :max_history_len]
    missing = max_history_len - tf.shape(history)[1]
    history = tf.pad(history, [[0, 0], [0, missing]], constant_values=PAD_ID)
    return tf.ensure_shape(history, [None, max_history_len])


def check_features(features: Dict, context_features=(), with_label=False, max_history_len=None,
                   dense_features=()):
    """Checks presence, dtype and rank of every raw feature; returns canonical tensors.

    Scalars may come as `[B]` or `[B, 1]`; the history as dense `[B, L]`, ragged or sparse.
    Returns a dict with ids `[B]` int64, dense features `[B]` float32 and the history dense
    `[B, max_history_len]`.

    Raises:
      FeatureError: naming the offending feature.
    """
    if not isinstance(features, dict):
        raise FeatureError(f"Model inputs must be a dict of features, got {type(features)}.")
    required = (scalar_features(context_features) + tuple(dense_features) + (HISTORY,)
                + ((LABEL,) if with_label else ()))
    missing = [name for name in required if name not in features]
    if missing:
        raise FeatureError(f"Missing input feature(s) {missing}; expected {list(required)}.")
    out = {}
    for name in required:
        value = features[name]
        if not isinstance(value, (tf.Tensor, tf.RaggedTensor, tf.SparseTensor, tf.Variable)):
            value = tf.convert_to_tensor(value)
        if name in dense_features:
            if not value.dtype.is_floating:
                raise FeatureError(f"Feature '{name}' must be a float tensor, got "
                                   f"{value.dtype.name}.")
        elif not (value.dtype.is_integer or (name == LABEL and value.dtype.is_floating)):
            raise FeatureError(f"Feature '{name}' must be an integer tensor, got {value.dtype.name}.")
        rank = value.shape.rank
        if name == HISTORY:
            if rank != 2:
                raise FeatureError(f"Feature '{name}' must have rank 2 [batch, length], got "
                                   f"shape {value.shape}.")
            out[name] = pad_history(value, max_history_len)
            continue
        if rank == 2 and value.shape[1] == 1:
            value = value[:, 0]
        elif rank != 1:
            raise FeatureError(f"Feature '{name}' must have shape [batch] or [batch, 1], got "
                               f"{value.shape}.")
        out[name] = (value if name == LABEL else
                     tf.cast(value, tf.float32 if name in dense_features else tf.int64))
    return out



def to_examples(features: Dict) -> list:
    """Serialized tf.Examples (bytes) from a dict of per-example arrays.

    Every feature but `history_item_ids` is written as one int64 value per example; history
    rows may be `PAD_ID` padded (padding is dropped). This is the format of the stored
    TFRecords, of the serving signature's input and of the gRPC client's requests.
    """
    import numpy as np

    if HISTORY not in features:
        raise FeatureError(f"Missing feature '{HISTORY}' to build tf.Examples.")
    history = np.asarray(features[HISTORY])
    columns = {}
    for name, value in features.items():
        if name == HISTORY:
            continue
        value = np.asarray(value).reshape(len(history), -1)
        if value.shape[1] != 1 or not np.issubdtype(value.dtype, np.integer):
            raise FeatureError(f"Feature '{name}' must hold one integer per example, got "
                               f"{value.dtype} of shape {value.shape}.")
        columns[name] = value[:, 0]
    out = []
    for row in range(len(history)):
        feature = {n: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v[row])]))
                   for n, v in columns.items()}
        values = history[row].reshape(-1)
        feature[HISTORY] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=values[values != PAD_ID]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString())
    return out
