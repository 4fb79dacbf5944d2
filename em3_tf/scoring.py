"""Scores with ids: predictions as a table that lines up with its examples.

`model.predict` returns a bare `[B]` array; `score_table` returns one row per example with
the user id, the item id, the score, the label where the examples have one, and, for an
exported model, whether the model knows the item (`in_catalog`).

    from em3_tf.scoring import score_table
    table = score_table(model, data.model_features("test"))        # a Keras EM3Ranker
    table = score_table("runs/em3/saved_model", features)          # an exported SavedModel

    # batch scoring of a built data set's split with an exported (or pushed) model:
    python -m em3_tf.scoring --model artifacts/serving/em3/<version> \\
        --data artifacts/ml-100k --protocol item_cold --split test --out scores.csv
"""

import argparse
import sys
from typing import Dict

import numpy as np
import pandas as pd

from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.interface import IN_CATALOG, SIGNATURE_OUTPUT


def _saved_model_scores(model, features, batch_size):
    signature = model.signatures["predict_features"]
    names = list(signature.structured_input_signature[1])
    missing = [n for n in names if n not in features]
    if missing:
        raise F.FeatureError(f"Missing input feature(s) {missing} for the exported model.")
    parts = {SIGNATURE_OUTPUT: [], IN_CATALOG: []}
    for start in range(0, len(features[F.ITEM_ID]), batch_size):
        batch = {n: tf.constant(np.asarray(features[n][start:start + batch_size]))
                 for n in names}
        out = signature(**batch)
        for key in parts:
            parts[key].append(out[key].numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def score_table(model, features: Dict[str, np.ndarray], batch_size: int = 1024
                ) -> pd.DataFrame:
    """`DataFrame[user_id, item_id, score (, label) (, in_catalog)]`, one row per example.

    Args:
      model: a Keras `EM3Ranker`, a loaded SavedModel exported by `em3_tf.export`, or the
        path of one.
      features: raw feature arrays (`em3_tf.features`; sequences `[n, L]` padded), e.g.
        `RankingData.model_features(split)` or `em3_tf.data.records.read_split(...)`.
      batch_size: examples per forward pass.
    """
    if isinstance(model, str):
        model = tf.saved_model.load(model)
    table = pd.DataFrame({F.USER_ID: np.asarray(features[F.USER_ID]),
                          F.ITEM_ID: np.asarray(features[F.ITEM_ID])})
    if hasattr(model, "signatures") and "predict_features" in model.signatures:
        out = _saved_model_scores(model, features, batch_size)
        table["score"] = out[SIGNATURE_OUTPUT]
        table[IN_CATALOG] = out[IN_CATALOG]
    else:
        inputs = {n: v for n, v in features.items() if n != F.LABEL}
        dataset = tf.data.Dataset.from_tensor_slices(inputs).batch(batch_size)
        table["score"] = model.predict(dataset, verbose=0).reshape(-1)
    if F.LABEL in features:
        table.insert(3, F.LABEL, np.asarray(features[F.LABEL]))
    return table


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m em3_tf.scoring", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an exported SavedModel directory")
    p.add_argument("--data", required=True, help="a directory written by em3_tf.data.build")
    p.add_argument("--protocol", default="item_cold", choices=["temporal", "item_cold"])
    p.add_argument("--split", default="test", choices=["train", "eval", "test"])
    p.add_argument("--out", required=True, help="CSV (or .parquet) file to write")
    args = p.parse_args(argv)
    from em3_tf.data.records import read_split
    table = score_table(args.model, read_split(args.data, args.protocol, args.split))
    if args.out.endswith(".parquet"):
        table.to_parquet(args.out, index=False)
    else:
        table.to_csv(args.out, index=False)
    print(f"scored {len(table)} examples -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
