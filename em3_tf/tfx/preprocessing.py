"""Transform `preprocessing_fn`: vocabularies with OOV handling and a normalised activity feature.

Outputs (the transform graph travels into the served model):
  - ids (`user_id`, `item_id`, context features; int64 or string), the behaviour sequences
    (`history_*`) and
    the user's running statistics pass through raw (the model embeds and normalises them): the
    item catalog is keyed by raw item id, so an item never seen in training still finds its
    content. Their vocabularies are computed over the training split (`tft.vocabulary`, ids
    seen fewer than `FREQUENCY_THRESHOLD` times left out) and read by the Trainer, whose
    lookup layers send every other id to the OOV bucket.
  - `history_length_z`: z-scored log(1 + number of history items), a dense feature.
  - `label` passes through when present (absent at serving).

Context features are not listed here: every input feature that is not an id, a behaviour
sequence, a user statistic, the label or an analysis feature (`em3_tf.data.records`) is a
categorical context feature of the data set (declared by its data build and schema), and is
used, never dropped. A float context feature is refused, naming it.
"""

import tensorflow as tf
import tensorflow_transform as tft

from em3_tf import features as F
from em3_tf.data.records import ANALYSIS_FEATURES

FREQUENCY_THRESHOLD = 1
DENSE_FEATURES = ("history_length_z",)
_NOT_CONTEXT = frozenset(F.scalar_features() + F.SEQUENCES + F.USER_STATISTICS + (F.LABEL,)
                         + ANALYSIS_FEATURES + DENSE_FEATURES)


def context_features(feature_names) -> tuple:
    """The categorical context features among `feature_names` (sorted)."""
    return tuple(sorted(set(feature_names) - _NOT_CONTEXT))


def vocabulary_name(feature: str) -> str:
    return f"{feature}_vocab"


def _dense(x):
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x)
    return tf.reshape(x, [-1])


def preprocessing_fn(inputs):
    outputs = {}
    for name in F.scalar_features(context_features(inputs)):
        value = inputs[name]
        if value.dtype.is_floating:
            raise ValueError(f"Feature '{name}' is a float: a context feature must be an "
                             f"integer or string id (declare numeric features as dense).")
        outputs[name] = _dense(value)
        tft.vocabulary(outputs[name], vocab_filename=vocabulary_name(name),
                       frequency_threshold=FREQUENCY_THRESHOLD)
    for name in F.SEQUENCES:
        outputs[name] = inputs[name]
    for name in F.USER_STATISTICS:
        outputs[name] = _dense(inputs[name])
    history = inputs[F.HISTORY]
    count = tf.reshape(
        tf.sparse.reduce_sum(tf.SparseTensor(history.indices, tf.ones_like(
            history.indices[:, 0]), history.dense_shape), axis=1)
        if isinstance(history, tf.SparseTensor) else history.row_lengths(), [-1])
    outputs["history_length_z"] = tft.scale_to_z_score(tf.math.log1p(tf.cast(count, tf.float32)))
    if F.LABEL in inputs:
        outputs[F.LABEL] = _dense(inputs[F.LABEL])
    return outputs
