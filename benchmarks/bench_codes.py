"""Semantic-id codebooks on MovieLens-100K (not a test): collision rate and utilisation.

    .venv/bin/python -m benchmarks.bench_codes [--data artifacts/ml-100k]

RQ-KMeans codes (`em3_tf.quantization.rq`) of the 1,682 catalog items, 3 levels, for each
representation the ranker can quantize (`semantic_id_source`): the frozen content features,
those features aligned on the temporal training split's co-engagement pairs, and the content
embeddings of an EM3 trained on that split (`em3` preset, its recorded hyper-parameters, early
stopping on eval, seed 0); codebook sizes 16, 64 (the presets' size) and 256. Per case: the
share of items whose full code another item shares (collision rate), the share of each level's
centroids in use (utilisation), the number of distinct code prefixes of each length, and the
residual error after each level relative to the representation's mean squared norm. Writes
`<out>/codes.json`; `benchmarks.report` plots it.
"""

import argparse
import json
import os
import sys

from benchmarks import RESULTS, recorded_hyperparameters

LEVELS = 3
CODEBOOK_SIZES = (16, 64, 256)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="artifacts/ml-100k")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--epochs", type=int, default=4, help="at most this many epochs of the EM3 "
                   "whose content embeddings the 'em3' source quantizes")
    args = p.parse_args(argv)

    import numpy as np

    from benchmarks import machine
    from em3_tf.config import SOURCES
    from em3_tf.data.records import load_dataset
    from em3_tf.quantization.alignment import item_representation
    from em3_tf.quantization.rq import ResidualQuantizer, collision_rate, utilisation

    if not os.path.exists(os.path.join(args.data, "summary.json")):
        from em3_tf.data import build
        build.main(["--out", args.data])
    data = load_dataset(args.data, "temporal")
    rows = []
    for source in SOURCES:
        trained = trained_em3(data, args.epochs) if source == "em3" else None
        features = item_representation(data.catalog, source, data.splits["train"],
                                       content_model=trained)
        scale = float(np.mean(np.sum(features ** 2, axis=1)))
        for size in CODEBOOK_SIZES:
            quantizer = ResidualQuantizer(LEVELS, size).fit(features)
            codes = quantizer.encode(features).numpy()
            rows.append({"source": source, "codebook_size": size, "levels": LEVELS,
                         "items": int(len(codes)),
                         "collision_rate": round(collision_rate(codes), 4),
                         "distinct_prefixes": [int(len(np.unique(codes[:, :level], axis=0)))
                                               for level in range(1, LEVELS + 1)],
                         "utilisation": [round(u, 4) for u in utilisation(codes, size)],
                         "relative_residual_error": [round(e / scale, 4)
                                                     for e in quantizer.residual_errors]})
            print(f"{source:8s} {size:3d} x {LEVELS}: collisions {rows[-1]['collision_rate']}, "
                  f"utilisation {rows[-1]['utilisation']}, residual "
                  f"{rows[-1]['relative_residual_error']}", flush=True)
    with open(os.path.join(args.out, "codes.json"), "w") as f:
        json.dump({"machine": machine(), "data": args.data, "rows": rows}, f, indent=2)
    from benchmarks.report import codes_markdown
    print(codes_markdown({"rows": rows}))
    return 0


def trained_em3(data, epochs):
    """The `em3` preset with its recorded hyper-parameters, trained on `data` (seed 0)."""
    from em3_tf.config import EM3Config
    from em3_tf.training import train_and_evaluate
    from em3_tf.tuning import read_hyperparameters

    tuned = read_hyperparameters(recorded_hyperparameters("em3"))
    config = EM3Config.preset("em3", context_features=data.context_features, **tuned)
    print(f"training EM3 ({data.protocol}, at most {epochs} epochs) for the 'em3' source ...",
          flush=True)
    model, report = train_and_evaluate(config, data, epochs=epochs, verbose=0, split=None)
    print(f"  eval AUC {report['eval_auc']:.4f} (best epoch {report['best_epoch']})",
          flush=True)
    return model


if __name__ == "__main__":
    sys.exit(main())
