"""On-disk format shared by every data source: gzip TFRecords of tf.Examples + item catalog.

    <out>/
      catalog/catalog.npz, catalog.json     item content table (every catalog item)
      <protocol>/{train,eval,test}/examples.tfrecord.gz
      <protocol>/metadata.json              data name, protocol, context features
      summary.json                          counts per protocol and split

Each tf.Example holds the raw model features (`em3_tf.features`: ids, feedback sequences,
user statistics) plus, for analysis only, `timestamp`, `is_cold_item` (0/1: the item has no
training interaction), `is_new_user` (0/1: the user has no training interaction),
`history_length` and `user_activity_bucket` (0: no earlier item, 1: 1-4, 2: 5-19, 3: 20-49,
4: 50 or more).
"""

import json
import os
from typing import Dict, Optional

import numpy as np

from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.catalog import ItemCatalog
from em3_tf.data.dataset import RankingData
from em3_tf.data.splits import IS_COLD, IS_NEW_USER, SPLITS, TIMESTAMP, summarize
from em3_tf.evaluation import popularity_auc

HISTORY_LENGTH = "history_length"
USER_ACTIVITY = "user_activity_bucket"
ACTIVITY_EDGES = (1, 5, 20, 50)  # buckets: 0 | 1-4 | 5-19 | 20-49 | 50+ earlier items
ANALYSIS_FEATURES = (TIMESTAMP, IS_COLD, IS_NEW_USER, HISTORY_LENGTH, USER_ACTIVITY)
FILE_NAME = "examples.tfrecord.gz"


def split_features(data: RankingData, split: str) -> Dict[str, np.ndarray]:
    part = data.splits[split]
    out = data.model_features(split)
    out[TIMESTAMP] = part[TIMESTAMP]
    out[IS_COLD] = part[IS_COLD].astype(np.int64)
    out[IS_NEW_USER] = part[IS_NEW_USER].astype(np.int64)
    out[HISTORY_LENGTH] = (part[F.HISTORY] != F.padding_of(part[F.HISTORY])).sum(
        axis=1).astype(np.int64)
    out[USER_ACTIVITY] = np.digitize(out[HISTORY_LENGTH], ACTIVITY_EDGES).astype(np.int64)
    return out


def write_protocol(data: RankingData, out_dir: str) -> str:
    """Writes the splits of `data` to `<out_dir>/<protocol>/`; returns that directory."""
    base = os.path.join(out_dir, data.protocol)
    for split in SPLITS:
        path = os.path.join(base, split, FILE_NAME)
        tf.io.gfile.makedirs(os.path.dirname(path))
        tmp = path + ".tmp"
        with tf.io.TFRecordWriter(tmp, options="GZIP") as writer:
            for record in F.to_examples(split_features(data, split)):
                writer.write(record)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    with tf.io.gfile.GFile(os.path.join(base, "metadata.json"), "w") as f:
        json.dump({"name": data.name, "protocol": data.protocol,
                   "context_features": list(data.context_features),
                   "max_history_len": int(data.splits["train"][F.HISTORY].shape[1]),
                   "string_ids": data.string_ids}, f, indent=2)
    return base


def write_dataset(datasets, out_dir: str, extra: Optional[Dict] = None) -> Dict:
    """Writes the catalog once and every protocol's splits; returns and saves the summary
    (with the entries of `extra`, e.g. the data report)."""
    datasets = list(datasets)
    datasets[0].catalog.save(os.path.join(out_dir, "catalog"))
    summary = {"data": datasets[0].name, "catalog_items": len(datasets[0].catalog),
               "string_ids": datasets[0].string_ids, **(extra or {}), "protocols": {}}
    for data in datasets:
        write_protocol(data, out_dir)
        summary["protocols"][data.protocol] = summarize(data.splits, F.LABEL)
        train, evaluation = data.splits["train"], data.splits["eval"]
        summary["protocols"][data.protocol]["popularity_eval_auc"] = round(popularity_auc(
            train[F.ITEM_ID], train[F.LABEL], evaluation[F.ITEM_ID], evaluation[F.LABEL]), 4)
    with tf.io.gfile.GFile(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _dense(value, length: int) -> np.ndarray:
    """A parsed ragged sequence as a `[n, length]` array padded like the build's (strings
    decoded to str)."""
    pad = F.PAD_STRING.encode() if value.dtype == tf.string else F.PAD_ID
    dense = value.to_tensor(default_value=pad, shape=[None, length]).numpy()
    return _text(dense) if value.dtype == tf.string else dense


def _text(values: np.ndarray) -> np.ndarray:
    """UTF-8 bytes (an object array, as TensorFlow returns strings) -> str array."""
    return np.char.decode(values.astype(np.bytes_), "utf-8")


def read_split(out_dir: str, protocol: str, split: str) -> Dict[str, np.ndarray]:
    """The feature arrays of one written split (sequences padded, string ids as str)."""
    meta = read_metadata(out_dir, protocol)
    spec = F.example_spec(meta["context_features"], with_label=True,
                          string_ids=meta.get("string_ids", False))
    spec.update({n: tf.io.FixedLenFeature([], tf.int64) for n in ANALYSIS_FEATURES})
    path = os.path.join(out_dir, protocol, split, FILE_NAME)
    ds = tf.data.TFRecordDataset(path, compression_type="GZIP").batch(4096).map(
        lambda x: tf.io.parse_example(x, spec))
    columns: Dict[str, list] = {n: [] for n in spec}
    for batch in ds:
        for n, value in batch.items():
            columns[n].append(_dense(value, meta["max_history_len"]) if n in F.SEQUENCES
                              else _text(value.numpy()) if value.dtype == tf.string
                              else value.numpy())
    return {n: np.concatenate(v) for n, v in columns.items()}


def read_metadata(out_dir: str, protocol: str) -> Dict:
    """`<out_dir>/<protocol>/metadata.json`: data name, protocol, context features, maximum
    history length and whether ids are strings."""
    with tf.io.gfile.GFile(os.path.join(out_dir, protocol, "metadata.json")) as f:
        return json.load(f)


def load_dataset(out_dir: str, protocol: str) -> RankingData:
    """`RankingData` back from `write_dataset`'s files."""
    meta = read_metadata(out_dir, protocol)
    splits = {}
    for split in SPLITS:
        part = read_split(out_dir, protocol, split)
        part[IS_COLD] = part[IS_COLD].astype(bool)
        part[IS_NEW_USER] = part[IS_NEW_USER].astype(bool)
        splits[split] = part
    return RankingData(meta["name"], splits, ItemCatalog.load(os.path.join(out_dir, "catalog")),
                       tuple(meta["context_features"]), protocol)
