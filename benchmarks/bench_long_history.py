"""Whole histories on MovieLens-100K (not a test): EM3 at L=50 vs L=500 with codebook retrieval.

    .venv/bin/python -m benchmarks.bench_long_history            # builds the data if needed

The data are MovieLens-100K built with each user's whole past (`--max-history-len 500`; the
longest ML-100K user has 737 ratings, so 500 covers all but a few). Every variant reads the
same records, on the temporal protocol, with EM3's tuned hyper-parameters
(`pipelines/hyperparameters/ml-100k/em3`, tuned at L=50: the long-history variants are not
re-tuned, which can only favour the reference), the same early stopping on eval, 5 seeds,
and is compared with `em3` paired by seed. Each row changes one thing from the row before:

  em3            the default preset: DIN (MLP) content attention over the last 50 items
  em3_dot        the dot-product content attention that retrieval estimates, L=50
  em3_dot_L500   the same over the last 500 items, exact (every item through the branch)
  em3_pq_L500    `em3_pq`: PQ retrieval of the 50 items with the highest estimated
                 attention logits among the last 500, then the same attention over those 50

For `em3_pq_L500` the retrieval's recall@50 against the exact attention's top 50 is measured
on the trained model over test rows with more than 50 history items (codes as evaluated).
Runs append to `<out>/long_history_runs.jsonl` (an interrupted run resumes); the aggregate
goes to `<out>/long_history.json`.
"""

import argparse
import os
import sys
import time

from benchmarks import RESULTS, recorded_hyperparameters
from benchmarks.bench_quality import _append_jsonl, _read_jsonl, aggregate, config_key

VARIANTS = (("em3", "em3", {}),
            ("em3_dot", "em3", {"content_attention": "dot"}),
            ("em3_dot_L500", "em3", {"content_attention": "dot", "max_history_len": 500}),
            ("em3_pq_L500", "em3_pq", {"max_history_len": 500}))
PROTOCOL = "temporal"


def retrieval_recall(model, data, split="test", rows=1024) -> float:
    """Recall@K of `model`'s retrieval against its exact content attention's top K, over the
    first `rows` examples of `split` with more than K history items."""
    import numpy as np

    from em3_tf import features as F
    from em3_tf._tf import tf
    from em3_tf.layers.codebook_retrieval import recall_at_k

    k = model.config.history_retrieval_k
    inputs = model._inputs({n: tf.constant(v) for n, v in data.model_features(split).items()
                            if n != F.LABEL})
    long_enough = tf.reduce_sum(tf.cast(inputs[F.HISTORY] != F.PAD_ID, tf.int32), 1) > k
    chosen = tf.where(long_enough)[:rows, 0]
    recalls = []
    for start in range(0, int(chosen.shape[0]), 256):
        index = chosen[start:start + 256]
        sequences = {n: tf.gather(inputs[n], index) for n in F.SEQUENCES if n in inputs}
        content = model.content(model.content.rows_of(tf.gather(inputs[F.ITEM_ID], index)))
        recalls.append((recall_at_k(model.retrieve(content, sequences),
                                    model.content_logits(content, sequences)), len(index)))
    if not recalls:
        raise ValueError(f"No {split} row has more than K={k} history items to measure "
                         f"retrieval recall on.")
    return float(np.average([r for r, _ in recalls], weights=[n for _, n in recalls]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="artifacts/ml-100k-whole")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--variants", nargs="+", default=[label for label, _, _ in VARIANTS],
                   choices=[label for label, _, _ in VARIANTS],
                   help="run these (the table aggregates every recorded run)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--patience", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hyperparameters", default=recorded_hyperparameters("em3"))
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)

    import json

    from benchmarks import machine
    from em3_tf._tf import tf
    from em3_tf.config import EM3Config
    from em3_tf.data.records import load_dataset
    from em3_tf.training import train_and_evaluate
    from em3_tf.tuning import read_hyperparameters

    if not os.path.exists(os.path.join(args.data, "summary.json")):
        from em3_tf.data import build
        build.main(["--out", args.data, "--max-history-len", "500"])
    data = load_dataset(args.data, PROTOCOL)
    tuned = read_hyperparameters(args.hyperparameters)
    runs_file = os.path.join(args.out, "long_history_runs.jsonl")
    done = {(r["preset"], r["seed"], r["config_key"]): r for r in _read_jsonl(runs_file)}
    rows, start = [], time.perf_counter()
    total, count = len(VARIANTS) * len(args.seeds), 0  # count: runs recorded or made
    for label, preset, overrides in VARIANTS:
        config = EM3Config.preset(preset, context_features=data.context_features,
                                  **{**tuned, **overrides})
        for seed in args.seeds:
            count += 1
            key = (label, seed, config_key(config))
            if key in done:
                rows.append(done[key])
                continue
            if label not in args.variants:
                continue
            model, report = train_and_evaluate(
                config, data, epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                verbose=0, patience=args.patience)
            if config.history_retrieval_k:
                report["retrieval_recall_at_k"] = retrieval_recall(model, data)
            row = {"protocol": PROTOCOL, "preset": label, "seed": seed, "config_key": key[2],
                   "hyperparameters": tuned, "overrides": overrides, **report}
            _append_jsonl(runs_file, row)
            rows.append(row)
            recall = row.get("retrieval_recall_at_k")
            print(f"[{count}/{total}] {label} seed {seed}: AUC {row['auc']:.4f}, returning "
                  f"users {row['returning_user_auc']:.4f}"
                  + (f", recall@50 {recall:.3f}" if recall is not None else "")
                  + f" ({row['train_seconds']:.0f}s; {time.perf_counter() - start:.0f}s "
                  f"elapsed)", flush=True)
            tf.keras.backend.clear_session()
    labels = [label for label, _, _ in VARIANTS]
    recalls = [r["retrieval_recall_at_k"] for r in rows if "retrieval_recall_at_k" in r]
    result = {"machine": machine(), "data": args.data, "protocol": PROTOCOL,
              "seeds": args.seeds, "max_epochs": args.epochs, "hyperparameters": tuned,
              "variants": {label: {"preset": preset, "overrides": overrides}
                           for label, preset, overrides in VARIANTS},
              "retrieval_recall_at_50": recalls,
              "table": aggregate(rows, labels, [PROTOCOL])[PROTOCOL]}
    with open(os.path.join(args.out, "long_history.json"), "w") as f:
        json.dump(result, f, indent=2)
    from benchmarks.report import long_history_markdown
    print(long_history_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
