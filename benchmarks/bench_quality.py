"""Quality benchmark on real data: every variant x seed x split protocol, with `model.fit`.

    .venv/bin/python benchmarks/bench_quality.py                       # the full table
    .venv/bin/python benchmarks/bench_quality.py --presets id_dcn em3 --seeds 0   # quick

Trains each EM3Config preset on MovieLens-100K (built with `python -m em3_tf.data.build` if
missing) and reports, on the test split:
  - temporal protocol: AUC, GAUC (per-user AUC averaged over users with both classes), log-loss,
    and AUC on warm items;
  - item_cold protocol: AUC and log-loss on the cold items (held out of training entirely);
  - training seconds.
Every finished run is appended to `<out>/quality_runs.jsonl` at once, and a run already there
is not repeated, so an interrupted benchmark resumes. `<out>/quality.json` holds the
aggregates (mean, std over seeds). TensorBoard logs go to `<tensorboard>/<protocol>/<preset>/
seed<k>`. With `--save-embeddings`, the seed-0 temporal EM3 model's item content embeddings
are saved for the projection plot.
"""

import argparse
import json
import os
import statistics
import sys
import time

DEFAULT_PRESETS = ("id_dcn", "id_din", "frozen_content", "em3", "em3_no_qformer",
                   "em3_no_lora", "em3_no_cic")
METRICS = {"temporal": ("auc", "gauc", "logloss", "warm_auc"),
           "item_cold": ("cold_auc", "cold_logloss", "cold_examples")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="artifacts/ml-100k")
    p.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--protocols", nargs="+", default=["temporal", "item_cold"],
                   choices=["temporal", "item_cold"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--tensorboard", default="runs/bench")
    p.add_argument("--save-embeddings", action="store_true")
    return p.parse_args(argv)


def _done(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r["protocol"], r["preset"], r["seed"], r["epochs"]): r for r in rows}


def aggregate(rows, presets, protocols):
    """`{protocol: {preset: {metric: {"mean", "std", "n"}}}}` over seeds."""
    table = {}
    for protocol in protocols:
        for preset in presets:
            runs = [r for r in rows if r["protocol"] == protocol and r["preset"] == preset]
            if not runs:
                continue
            entry = {}
            for metric in METRICS[protocol] + ("train_seconds",):
                values = [r[metric] for r in runs]
                entry[metric] = {"mean": statistics.fmean(values),
                                 "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                 "n": len(values)}
            table.setdefault(protocol, {})[preset] = entry
    return table


def main(argv=None):
    args = parse_args(argv)
    from em3_tf._tf import tf
    from em3_tf.config import EM3Config
    from em3_tf.data.records import load_dataset
    from em3_tf.training import train_and_evaluate

    if not os.path.exists(os.path.join(args.data, "summary.json")):
        from em3_tf.data import build
        build.main(["--out", args.data])
    os.makedirs(args.out, exist_ok=True)
    runs_file = os.path.join(args.out, "quality_runs.jsonl")
    done = _done(runs_file)
    total = len(args.protocols) * len(args.presets) * len(args.seeds)
    count, start = 0, time.perf_counter()
    for protocol in args.protocols:
        data = load_dataset(args.data, protocol)
        for preset in args.presets:
            for seed in args.seeds:
                count += 1
                key = (protocol, preset, seed, args.epochs)
                if key in done:
                    print(f"[{count}/{total}] {protocol} {preset} seed {seed}: done before",
                          flush=True)
                    continue
                config = EM3Config.preset(preset, context_features=data.context_features)
                model, report = train_and_evaluate(
                    config, data, epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                    verbose=0, validate=False,
                    log_dir=os.path.join(args.tensorboard, protocol, preset, f"seed{seed}"))
                row = {"protocol": protocol, "preset": preset, "seed": seed,
                       "epochs": args.epochs, **report}
                with open(runs_file, "a") as f:
                    f.write(json.dumps(row) + "\n")
                done[key] = row
                shown = {m: round(row[m], 4) for m in METRICS[protocol]}
                print(f"[{count}/{total}] {protocol} {preset} seed {seed}: {shown} "
                      f"({row['train_seconds']:.0f}s train, "
                      f"{time.perf_counter() - start:.0f}s elapsed)", flush=True)
                if args.save_embeddings and protocol == "temporal" and preset == "em3" \
                        and seed == args.seeds[0]:
                    save_embeddings(model, data, os.path.join(args.out, "embeddings.npz"))
                tf.keras.backend.clear_session()
    rows = [r for k, r in done.items() if k[3] == args.epochs and k[0] in args.protocols
            and k[1] in args.presets and k[2] in args.seeds]
    from benchmarks import machine
    result = {"machine": machine(), "data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
              "seeds": args.seeds, "presets": args.presets, "protocols": args.protocols,
              "table": aggregate(rows, args.presets, args.protocols)}
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump(result, f, indent=2)
    from benchmarks.report import quality_markdown
    print(quality_markdown(result))
    return 0


def save_embeddings(model, data, path):
    """Item content embeddings before (frozen pooled features) and after EM3 training."""
    import numpy as np
    after = model.content.encode_all().numpy()[1:]  # row 0 is the unknown-item row
    np.savez(path, item_ids=data.catalog.item_ids, before=data.catalog.pooled(), after=after,
             genre=data.catalog.metadata["main_genre"])


if __name__ == "__main__":
    sys.exit(main())
