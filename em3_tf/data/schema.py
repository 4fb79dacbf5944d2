"""The TFMD schema of the stored examples, and a TFDV check against it.

    python -m em3_tf.data.schema           # rewrites schemas/*.pbtxt from this module

Environments: `TRAINING` (every feature) and `SERVING` (no label, no analysis features).
Ids are non-negative integers (-1 is the history padding and never stored), or, for a data
set with string ids, non-empty strings.
"""

import argparse
import os
from typing import Dict, Iterable, Tuple

from tensorflow_metadata.proto.v0 import schema_pb2

from em3_tf import features as F
from em3_tf.data.movielens import CONTEXT_DOMAINS, CONTEXT_FEATURES
from em3_tf.data.records import ACTIVITY_EDGES, HISTORY_LENGTH, USER_ACTIVITY
from em3_tf.data.splits import IS_COLD, IS_NEW_USER, TIMESTAMP

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "schemas")
# name -> (context features, {feature: (min, max)})
KNOWN: Dict[str, Tuple[Tuple[str, ...], Dict[str, Tuple[int, int]]]] = {
    "schema.pbtxt": (CONTEXT_FEATURES, CONTEXT_DOMAINS),
    "synthetic.pbtxt": ((), {}),
}


class SchemaError(ValueError):
    """Examples violate the schema; the message lists each anomaly by feature."""


def make_schema(context_features: Iterable[str] = (), domains=None,
                max_history_len=1000, string_ids=False) -> schema_pb2.Schema:
    """The schema of a data set's examples; ids (user, item, history items, context) are
    BYTES when `string_ids`, else INT with the `domains` `{feature: (min, max)}`."""
    domains = dict(domains or {})
    schema = schema_pb2.Schema()
    schema.default_environment.extend(["TRAINING", "SERVING"])
    ids = F.id_features(context_features)

    def add(name, lo, hi, description, max_values=1, training_only=False):
        string = string_ids and name in ids
        feature = schema.feature.add(name=name, type=schema_pb2.BYTES if string
                                     else schema_pb2.INT)
        if not string:
            feature.int_domain.min, feature.int_domain.max = lo, hi
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        if max_values > 1:
            feature.value_count.min, feature.value_count.max = 0, max_values
        else:  # a fixed shape makes TF Transform parse it as FixedLenFeature([1])
            feature.shape.dim.add(size=1)
        feature.annotation.comment.append(description)
        if training_only:
            feature.not_in_environment.append("SERVING")

    big = 2 ** 62
    add(F.USER_ID, 0, big, "user identifier")
    add(F.ITEM_ID, 0, big, "candidate item identifier; key into the item catalog")
    add(F.HISTORY, 0, big, "the user's earlier items, most recent first",
        max_values=max_history_len)
    add(F.HISTORY_LABELS, 0, 1, "feedback of each history entry (1 positive)",
        max_values=max_history_len)
    add(F.HISTORY_RATINGS, 0, big, "rating of each history entry (0: none in the data)",
        max_values=max_history_len)
    add(F.HISTORY_SECONDS, 0, big, "seconds from each history entry to this example",
        max_values=max_history_len)
    add(F.USER_COUNT, 0, big, "the user's number of earlier interactions")
    add(F.USER_POSITIVES, 0, big, "how many of the user's earlier interactions were positive")
    for name in context_features:
        lo, hi = domains.get(name, (-1, big))
        add(name, lo, hi, "categorical context feature (-1: unknown)")
    add(F.LABEL, 0, 1, "1 = click (rating >= threshold)", training_only=True)
    add(TIMESTAMP, 0, big, "interaction time, unix seconds (analysis only)", training_only=True)
    add(IS_COLD, 0, 1, "1 = the item has no training interaction (analysis only)",
        training_only=True)
    add(IS_NEW_USER, 0, 1, "1 = the user has no training interaction (analysis only)",
        training_only=True)
    add(HISTORY_LENGTH, 0, max_history_len, "number of history items (analysis only)",
        training_only=True)
    add(USER_ACTIVITY, 0, len(ACTIVITY_EDGES), "bucket of history_length (analysis only)",
        training_only=True)
    return schema


def load_schema(path: str) -> schema_pb2.Schema:
    import tensorflow_data_validation as tfdv
    return tfdv.load_schema_text(path)


def check_records(path: str, schema: schema_pb2.Schema, environment="TRAINING"):
    """Computes TFDV statistics of TFRecord file(s) `path` and raises `SchemaError` on anomalies."""
    import tensorflow_data_validation as tfdv
    stats = tfdv.generate_statistics_from_tfrecord(
        path, stats_options=tfdv.StatsOptions(schema=schema))
    anomalies = tfdv.validate_statistics(stats, schema, environment=environment)
    problems = [f"feature '{name}': {info.short_description} ({info.description})"
                for name, info in sorted(anomalies.anomaly_info.items())]
    if anomalies.HasField("dataset_anomaly_info"):
        problems.append(f"dataset: {anomalies.dataset_anomaly_info.description}")
    if problems:
        raise SchemaError(f"{path} violates the schema:\n  " + "\n  ".join(problems))
    return stats


def write_known_schemas(schema_dir=SCHEMA_DIR):
    import tensorflow_data_validation as tfdv
    os.makedirs(schema_dir, exist_ok=True)
    for file, (context, domains) in KNOWN.items():
        tfdv.write_schema_text(make_schema(context, domains), os.path.join(schema_dir, file))
        print(os.path.join(schema_dir, file))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    write_known_schemas()
