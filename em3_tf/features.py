"""The tf.Example spec and input checks shared by training, export and serving.

Feature names are declared in `em3_tf.interface` (which needs no TensorFlow) and re-exported
here.
"""

from typing import Dict, Iterable

import numpy as np

from em3_tf._tf import tf
from em3_tf.interface import (  # noqa: F401  (re-exported: `F.USER_ID`, ...)
    FEEDBACK_FEATURES, FEEDBACK_SEQUENCES, HISTORY, HISTORY_LABELS, HISTORY_RATINGS,
    HISTORY_SECONDS, ITEM_ID, LABEL, PAD_ID, PAD_STRING, SEQUENCES, USER_COUNT, USER_ID,
    USER_POSITIVES, USER_STATISTICS, FeatureError, is_string, padding_of, raw_features,
    scalar_features, to_examples)

KEY_SPACE = 2 ** 63 - 1  # string ids hash into [0, KEY_SPACE)


def id_features(context_features: Iterable[str] = ()):
    """The features that hold ids (int64 or string): the scalar ids and the history items."""
    return scalar_features(context_features) + (HISTORY,)


def id_keys(ids):
    """int64 keys of ids: integers as they are; a string by its Fingerprint64
    (`tf.strings.to_hash_bucket_fast`) into `[0, KEY_SPACE)`, and `PAD_STRING` to `PAD_ID`.

    Every layer of the model works on these keys, so a data set's ids may be strings. Dense,
    ragged or sparse tensors of any shape; the structure is kept.
    """
    if isinstance(ids, tf.RaggedTensor):
        return ids.with_flat_values(id_keys(ids.flat_values))
    if isinstance(ids, tf.SparseTensor):
        return tf.sparse.map_values(id_keys, ids)
    ids = tf.convert_to_tensor(ids)
    if ids.dtype != tf.string:
        return tf.cast(ids, tf.int64)
    return tf.where(tf.equal(ids, PAD_STRING), tf.constant(PAD_ID, tf.int64),
                    tf.strings.to_hash_bucket_fast(ids, KEY_SPACE))


def keys_of(ids) -> np.ndarray:
    """`id_keys` of a NumPy array or list (int64 array of the same shape)."""
    ids = np.asarray(ids)
    if not is_string(ids):
        return ids.astype(np.int64)
    return id_keys(tf.constant(ids.astype(str).astype(object))).numpy()


def example_spec(context_features: Iterable[str] = (), with_label: bool = True,
                 string_ids: bool = False):
    """The `tf.io.parse_example` spec of the raw features (ids as strings if `string_ids`)."""
    id_type = tf.string if string_ids else tf.int64
    spec = {name: tf.io.FixedLenFeature([], id_type)
            for name in scalar_features(context_features)}
    spec.update({name: tf.io.FixedLenFeature([], tf.int64) for name in USER_STATISTICS})
    spec.update({name: tf.io.RaggedFeature(tf.int64) for name in SEQUENCES})
    spec[HISTORY] = tf.io.RaggedFeature(id_type)
    if with_label:
        spec[LABEL] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def pad_history(history, max_history_len=None):
    """Ragged, sparse or dense `[B, <=L]` sequence -> dense int64 `[B, max_history_len]`.

    Padded with `PAD_ID`; the first `max_history_len` entries (the most recent) are kept.
    String ids become their `id_keys`.
    """
    history = id_keys(history)
    if isinstance(history, tf.RaggedTensor):
        history = history.to_tensor(default_value=PAD_ID)
    elif isinstance(history, tf.SparseTensor):
        history = tf.sparse.to_dense(history, default_value=PAD_ID)
    if max_history_len is None:
        return history
    history = history[:, :max_history_len]
    missing = max_history_len - tf.shape(history)[1]
    history = tf.pad(history, [[0, 0], [0, missing]], constant_values=PAD_ID)
    return tf.ensure_shape(history, [None, max_history_len])


def check_features(features: Dict, context_features=(), with_label=False, max_history_len=None,
                   dense_features=(), feedback=False, string_ids=None):
    """Checks presence, dtype and rank of every raw feature; returns canonical tensors.

    Scalars may come as `[B]` or `[B, 1]`; sequences as dense `[B, L]`, ragged or sparse.
    Ids are integers, or strings when `string_ids` (None: either). `feedback` makes the
    feedback sequences and user statistics required. Returns a dict with ids (as `id_keys`) and counts `[B]` int64, dense
    features `[B]` float32 and sequences dense `[B, max_history_len]`.

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
    out, ids = {}, id_features(context_features)
    for name in required:
        value = features[name]
        if not isinstance(value, (tf.Tensor, tf.RaggedTensor, tf.SparseTensor, tf.Variable)):
            value = tf.convert_to_tensor(value)
        if name in dense_features:
            if not value.dtype.is_floating:
                raise FeatureError(f"Feature '{name}' must be a float tensor, got "
                                   f"{value.dtype.name}.")
        elif name in ids and string_ids and value.dtype != tf.string:
            raise FeatureError(f"Feature '{name}' must be a string tensor (this model's ids are "
                               f"strings), got {value.dtype.name}.")
        elif not (value.dtype.is_integer or (name == LABEL and value.dtype.is_floating)
                  or (name in ids and value.dtype == tf.string and string_ids is not False)):
            either = name in ids and string_ids is None
            raise FeatureError(f"Feature '{name}' must be an integer{' or string' * either} "
                               f"tensor, got {value.dtype.name}.")
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
        out[name] = (value if name == LABEL else id_keys(value) if name in ids else
                     tf.cast(value, tf.float32 if name in dense_features else tf.int64))
    return out
