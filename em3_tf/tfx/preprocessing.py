"""Transform `preprocessing_fn`: vocabularies with OOV handling and a normalised activity feature.

Outputs (the transform graph travels into the served model):
  - ids (`user_id`, `item_id`, context features), the behaviour sequences (`history_*`) and
    the user's running statistics pass through raw (the model embeds and normalises them): the
    item catalog is keyed by raw item id, so an item never seen in training still finds its
    content. Their vocabularies are computed over the training split (`tft.vocabulary`, ids
    seen fewer than `FREQUENCY_THRESHOLD` times left out) and read by the Trainer, whose
    lookup layers send every other id to the OOV bucket.
  - `history_length_z`: z-scored log(1 + number of history items), a dense feature.
  - `label` passes through when present (absent at serving).
"""

import tensorflow as tf
import tensorflow_transform as tft

from em3_tf import features as F

FREQUENCY_THRESHOLD = 1
DENSE_FEATURES = ("history_length_z",)
CATEGORICAL = (F.USER_ID, F.ITEM_ID, "user_age_bucket", "user_gender", "user_occupation")


def vocabulary_name(feature: str) -> str:
    return f"{feature}_vocab"


def _dense(x):
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x)
    return tf.reshape(x, [-1])


def preprocessing_fn(inputs):
    outputs = {}
    for name, value in inputs.items():
        if name in CATEGORICAL:
            outputs[name] = _dense(value)
            tft.vocabulary(outputs[name], vocab_filename=vocabulary_name(name),
                           frequency_threshold=FREQUENCY_THRESHOLD)
    for name in F.SEQUENCES:
        outputs[name] = inputs[name]
    for name in F.USER_STATISTICS:
        outputs[name] = _dense(inputs[name])
    history = inputs[F.HISTORY]
    count = tf.reshape(
        tf.sparse.reduce_sum(tf.sparse.map_values(tf.ones_like, history), axis=1)
        if isinstance(history, tf.SparseTensor) else history.row_lengths(), [-1])
    outputs["history_length_z"] = tft.scale_to_z_score(tf.math.log1p(tf.cast(count, tf.float32)))
    if F.LABEL in inputs:
        outputs[F.LABEL] = _dense(inputs[F.LABEL])
    return outputs
