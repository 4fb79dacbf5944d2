"""Build the stored examples, item catalog and split summary of a data source.

    python -m em3_tf.data.build --out artifacts/ml-100k                  # MovieLens-100K
    python -m em3_tf.data.build --source synthetic --out artifacts/synthetic   # SYNTHETIC demo
    python -m em3_tf.data.build --ml100k-dir ~/ml-100k --out ...         # GroupLens copy
    python -m em3_tf.data.build --interactions log.csv --items items.csv --out ...

Writes both split protocols (temporal, item_cold), checks every written split against the
schema in schemas/ with TFDV, prints and saves summary.json. Works offline.
"""

import argparse
import json
import os
import sys

from em3_tf.data.splits import PROTOCOLS


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m em3_tf.data.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["ml-100k", "synthetic", "log"], default=None,
                   help="data source (default: ml-100k, or 'log' when --interactions is given)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ml100k-dir", help="a GroupLens or RecBole ml-100k directory")
    p.add_argument("--interactions", help="interaction log CSV/Parquet (with --items)")
    p.add_argument("--items", help="item catalog CSV/Parquet (with --interactions)")
    p.add_argument("--max-history-len", type=int, default=50)
    p.add_argument("--label-threshold", type=float, default=4.0, help="click = rating >= this")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "EVAL", "TEST"))
    p.add_argument("--cold-fraction", type=float, default=0.2,
                   help="share of catalog items held out by the item_cold protocol")
    p.add_argument("--text-preset", help="keras-hub BERT preset directory (default: MiniLM-L6)")
    p.add_argument("--text-length", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=os.environ.get("EM3_CACHE_DIR", "artifacts/cache"),
                   help="where encoded catalogs are cached and reused")
    p.add_argument("--no-check", action="store_true", help="skip the TFDV schema check")
    return p.parse_args(argv)


def build_all(args):
    """One `RankingData` per protocol for the chosen source."""
    source = args.source or ("log" if args.interactions else "ml-100k")
    common = dict(max_history_len=args.max_history_len, seed=args.seed)
    if source == "synthetic":
        from em3_tf.data.synthetic import make_synthetic
        return [make_synthetic(protocol=p, cold_fraction=args.cold_fraction, **common)
                for p in PROTOCOLS]
    from em3_tf.data import movielens
    if source == "log":
        if not (args.interactions and args.items):
            raise SystemExit("--interactions and --items are both needed for a generic log.")
        tables, name = movielens.load_interaction_log(args.interactions, args.items), "log"
    else:
        tables, name = movielens.load_ml100k(args.ml100k_dir), "ml-100k"
    return [movielens.build(tables, protocol=p, label_threshold=args.label_threshold,
                            fractions=tuple(args.fractions), cold_fraction=args.cold_fraction,
                            text_preset=args.text_preset, text_length=args.text_length,
                            cache_dir=args.cache_dir, name=name, **common)
            for p in PROTOCOLS]


def main(argv=None):
    args = parse_args(argv)
    from em3_tf.data import records, schema

    datasets = build_all(args)
    summary = records.write_dataset(datasets, args.out)
    if not args.no_check:
        name = datasets[0].name
        known = (schema.make_schema(datasets[0].context_features) if name == "log" else
                 schema.load_schema(os.path.join(schema.SCHEMA_DIR, "synthetic.pbtxt"
                                                 if name == "synthetic" else "schema.pbtxt")))
        for data in datasets:
            for split in ("train", "eval", "test"):
                schema.check_records(
                    os.path.join(args.out, data.protocol, split, records.FILE_NAME), known)
        print("schema check: every split conforms", flush=True)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
