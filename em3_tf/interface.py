"""The served model's interface: feature names, signature names and the tf.Example encoding.

It imports no TensorFlow, so that clients stay light (`serving.client` builds its requests
from here and from `em3_tf.protos`). Every feature name is declared here, once. Raw
features of one example (one user, one candidate item):

| feature                | dtype | shape    | meaning                                               |
|------------------------|-------|----------|-------------------------------------------------------|
| `user_id`              | id    | `[]`     | user identifier                                       |
| `item_id`              | id    | `[]`     | candidate item identifier, key into the catalog       |
| `history_item_ids`     | id    | `[<= L]` | the user's earlier items, most recent first           |
| `history_labels`       | int64 | `[<= L]` | feedback of each history entry: 1 positive, 0 not     |
| `history_ratings`      | int64 | `[<= L]` | its rating (e.g. 1-5); 0 where the data has none      |
| `history_seconds_ago`  | int64 | `[<= L]` | seconds between that interaction and this example     |
| `user_prior_count`     | int64 | `[]`     | the user's number of earlier interactions (all time)  |
| `user_prior_positives` | int64 | `[]`     | how many of them were positive                        |
| context features       | id    | `[]`     | extra categorical features named in `EM3Config`       |
| dense features         | float | `[]`     | extra numeric features named in `EM3Config`           |
| `label`                | int64 | `[]`     | 1 = click (positive), 0 = not; absent at serving      |

"id" is int64 (>= 0) or string, one kind per data set: a log with string user or item ids
(e.g. "SKU-00017") keeps them as strings end to end, in the stored tf.Examples, the served
signatures and the client. Inside the model a string id becomes an int64 key
(`em3_tf.features.id_keys`).

"Earlier" means strictly earlier: an interaction at the example's own timestamp is not part
of its history or statistics. The four history sequences are aligned entry by entry. In
batched tensors they are dense `[B, L]`, padded with `PAD_ID` (-1), or `PAD_STRING` ("") for
string ids.
"""

from typing import Dict, Iterable

import numpy as np

from em3_tf import protos

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
PAD_STRING = ""

FEEDBACK_SEQUENCES = (HISTORY_LABELS, HISTORY_RATINGS, HISTORY_SECONDS)
SEQUENCES = (HISTORY,) + FEEDBACK_SEQUENCES
USER_STATISTICS = (USER_COUNT, USER_POSITIVES)
FEEDBACK_FEATURES = FEEDBACK_SEQUENCES + USER_STATISTICS

# Signatures of the exported SavedModel (see `em3_tf.export`).
SIGNATURE_INPUT = "examples"
SIGNATURE_OUTPUT = "scores"
IN_CATALOG = "in_catalog"  # bool beside the scores: the model knows the candidate item
CONTEXT_SIGNATURE = "serving_context"
CONTEXT_INPUT = "example_list_with_context"
ENCODE_SIGNATURE = "encode_items"


class FeatureError(ValueError):
    """Raised for a missing, mistyped or mis-shaped input feature; the message names it."""


def scalar_features(context_features: Iterable[str] = ()):
    """The ID features (each gets a vocabulary and an embedding)."""
    return (USER_ID, ITEM_ID) + tuple(context_features)


def raw_features(context_features: Iterable[str] = ()):
    """Every raw input feature of the model but the label: ids, statistics, sequences."""
    return scalar_features(context_features) + USER_STATISTICS + SEQUENCES


def is_string(values) -> bool:
    """Whether `values` (an array or a list) holds string ids."""
    values = np.asarray(values)
    return values.dtype.kind in "USO" and (values.size == 0 or isinstance(
        values.flat[0], (str, bytes)))


def padding_of(values):
    """The history padding for ids like `values`: `PAD_STRING` for strings, else `PAD_ID`."""
    return PAD_STRING if is_string(values) else PAD_ID


def example(features: Dict[str, Iterable]) -> bytes:
    """One serialized tf.Example (`{name: values}`): integers as int64, strings as bytes."""
    p = protos.load()
    message = p.example_pb2.Example()
    for name, values in features.items():
        values = np.asarray(values)
        if values.dtype.kind in "USO":  # strings; an empty string array stays bytes
            message.features.feature[name].bytes_list.value.extend(
                v.encode() if isinstance(v, str) else v for v in values.tolist())
        else:
            message.features.feature[name].int64_list.value.extend(
                values.astype(np.int64).tolist())
    return message.SerializeToString()


def _is_integer_or_string(value: np.ndarray, ids: bool) -> bool:
    return np.issubdtype(value.dtype, np.integer) or (ids and is_string(value))


def to_examples(features: Dict) -> list:
    """Serialized tf.Examples (bytes) from a dict of per-example arrays.

    Sequences (`SEQUENCES`) are `[n, L]` rows aligned with `history_item_ids` and padded
    (`PAD_ID`, or `PAD_STRING` for string ids; padding is dropped); every other feature is one
    value per example. Ids (`history_item_ids` and the scalar features but the user
    statistics) may be strings; everything else is an integer. This is the
    format of the stored TFRecords, of the serving signature's input and of the gRPC client's
    requests.
    """
    if HISTORY not in features:
        raise FeatureError(f"Missing feature '{HISTORY}' to build tf.Examples.")
    history = np.asarray(features[HISTORY]).reshape(len(features[HISTORY]), -1)
    valid = history != padding_of(history)
    columns, sequences = {}, {}
    for name, value in features.items():
        value = np.asarray(value)
        ids = name not in FEEDBACK_FEATURES + (LABEL,)
        if name in SEQUENCES:
            value = value.reshape(len(history), -1)
            if value.shape != history.shape or not _is_integer_or_string(value, ids):
                raise FeatureError(f"Feature '{name}' must be {'ids' if ids else 'integers'} "
                                   f"aligned with '{HISTORY}' {history.shape}, got "
                                   f"{value.dtype} of shape {value.shape}.")
            sequences[name] = value
            continue
        value = value.reshape(len(history), -1)
        if value.shape[1] != 1 or not _is_integer_or_string(value, ids):
            raise FeatureError(f"Feature '{name}' must hold one {'id' if ids else 'integer'} "
                               f"per example, got {value.dtype} of shape {value.shape}.")
        columns[name] = value[:, 0]
    # Features equal in every row (a request's user side) are serialized once: serialized
    # protobuf messages concatenated parse as their merge, so each row is the shared bytes
    # followed by its own features.
    if not len(history):
        return []
    same = (valid == valid[:1]).all()
    shared = {n: v[0][valid[0]] for n, v in sequences.items() if same and (v == v[:1]).all()}
    shared.update({n: v[:1] for n, v in columns.items() if (v == v[:1]).all()})
    head = example(shared)
    own_columns = {n: v for n, v in columns.items() if n not in shared}
    own_sequences = {n: v for n, v in sequences.items() if n not in shared}
    return [head + example({**{n: v[row:row + 1] for n, v in own_columns.items()},
                            **{n: v[row][valid[row]] for n, v in own_sequences.items()}})
            for row in range(len(history))]
