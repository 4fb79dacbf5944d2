"""Feature names, the tf.Example spec and input checks shared by training, export and serving.

Every feature name is declared here, once. Raw features of one example (one user, one
candidate item):

| feature                | dtype | shape    | meaning                                               |
|------------------------|-------|----------|-------------------------------------------------------|
| `user_id`              | int64 | `[]`     | user identifier                                       |
| `item_id`              | int64 | `[]`     | candidate item identifier (>= 0), key into the catalog|
| `history_item_ids`     | int64 | `[<= L]` | the user's earlier items, most recent first (>= 0)    |
| `history_labels`       | int64 | `[<= L]` | feedback of each history entry: 1 positive, 0 not     |
| `history_ratings`      | int64 | `[<= L]` | its rating (e.g. 1-5); 0 where the data has none      |
| `history_seconds_ago`  | int64 | `[<= L]` | seconds between that interaction and this example     |
| `user_prior_count`     | int64 | `[]`     | the user's number of earlier interactions (all time)  |
| `user_prior_positives` | int64 | `[]`     | how many of them were positive                        |
| context features       | int64 | `[]`     | extra categorical features named in `EM3Config`       |
| dense features         | float | `[]`     | extra numeric features named in `EM3Config`           |
| `label`                | int64 | `[]`     | 1 = click (positive), 0 = not; absent at serving      |

"Earlier" means strictly earlier: an interaction at the example's own timestamp is not part
of its history or statistics. The four history sequences are aligned entry by entry. In
batched tensors they are dense `[B, L]`, padded with `PAD_ID` (-1).
"""

from typing import Dict, Iterable

from em3_tf._tf import tf

USER_ID = "user_id"
ITEM_ID = "item_id"
HISTORY = "history_item_ids"
HISTORY_LABELS = "history_labels"
HISTORY_RATINGS = "history_ratings"
HISTORY_SECONDS = "history_seconds_ago"
USER_COUNT = "user_prior_count"
USER_POSITIVES = "user_prior_positives"
LABEL = "label"
PAD_ID = -1

FEEDBACK_SEQUENCES = (HISTORY_LABELS, HISTORY_RATINGS, HISTORY_SECONDS)
SEQUENCES = (HISTORY,) + FEEDBACK_SEQUENCES
USER_STATISTICS = (USER_COUNT, USER_POSITIVES)
FEEDBACK_FEATURES = FEEDBACK_SEQUENCES + USER_STATISTICS


class FeatureError(ValueError):
    """Raised for a missing, mistyped or mis-shaped input feature; the message names it."""


def scalar_features(context_features: Iterable[str] = ()):
    """The ID features (each gets a vocabulary and an embedding)."""
    return (USER_ID, ITEM_ID) + tuple(context_features)


def raw_features(context_features: Iterable[str] = ()):
    """Every raw input feature of the model but the label: ids, statistics, sequences."""
    return scalar_features(context_features) + USER_STATISTICS + SEQUENCES


def example_spec(context_features: Iterable[str] = (), with_label: bool = True):
    """The `tf.io.parse_example` spec of the raw features."""
    spec = {name: tf.io.FixedLenFeature([], tf.int64)
            for name in scalar_features(context_features) + USER_STATISTICS}
    spec.update({name: tf.io.RaggedFeature(tf.int64) for name in SEQUENCES})
    if with_label:
        spec[LABEL] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def pad_history(history, max_history_len=None):
    """Ragged, sparse or dense `[B, <=L]` sequence -> dense int64 `[B, max_history_len]`.

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
                   dense_features=(), feedback=False):
    """Checks presence, dtype and rank of every raw feature; returns canonical tensors.

    Scalars may come as `[B]` or `[B, 1]`; sequences as dense `[B, L]`, ragged or sparse.
    `feedback` makes the feedback sequences and user statistics required. Returns a dict with
    ids and counts `[B]` int64, dense features `[B]` float32 and sequences dense
    `[B, max_history_len]`.

    Raises:
      FeatureError: naming the offending feature.
    """
    if not isinstance(features, dict):
        raise FeatureError(f"Model inputs must be a dict of features, got {type(features)}.")
    required = (scalar_features(context_features) + tuple(dense_features) + (HISTORY,)
                + (FEEDBACK_FEATURES if feedback else ()) + ((LABEL,) if with_label else ()))
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
        if name in SEQUENCES:
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

    Sequences (`SEQUENCES`) are `[n, L]` rows aligned with `history_item_ids` and `PAD_ID`
    padded (padding is dropped); every other feature is one integer per example. This is the
    format of the stored TFRecords, of the serving signature's input and of the gRPC client's
    requests.
    """
    import numpy as np

    if HISTORY not in features:
        raise FeatureError(f"Missing feature '{HISTORY}' to build tf.Examples.")
    history = np.asarray(features[HISTORY]).reshape(len(features[HISTORY]), -1)
    valid = history != PAD_ID
    columns, sequences = {}, {}
    for name, value in features.items():
        value = np.asarray(value)
        if name in SEQUENCES:
            value = value.reshape(len(history), -1)
            if value.shape != history.shape or not np.issubdtype(value.dtype, np.integer):
                raise FeatureError(f"Feature '{name}' must be integers aligned with '{HISTORY}' "
                                   f"{history.shape}, got {value.dtype} of shape {value.shape}.")
            sequences[name] = value
            continue
        value = value.reshape(len(history), -1)
        if value.shape[1] != 1 or not np.issubdtype(value.dtype, np.integer):
            raise FeatureError(f"Feature '{name}' must hold one integer per example, got "
                               f"{value.dtype} of shape {value.shape}.")
        columns[name] = value[:, 0]
    out = []
    for row in range(len(history)):
        feature = {n: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v[row])]))
                   for n, v in columns.items()}
        for n, v in sequences.items():
            feature[n] = tf.train.Feature(int64_list=tf.train.Int64List(value=v[row][valid[row]]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString())
    return out
