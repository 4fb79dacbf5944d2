"""Build the stored examples, item catalog, schema and split summary of a data source.

    python -m em3_tf.data.build --out artifacts/ml-100k                  # MovieLens-100K
    python -m em3_tf.data.build --source synthetic --out artifacts/synthetic   # SYNTHETIC demo
    python -m em3_tf.data.build --ml100k-dir ~/ml-100k --out ...         # GroupLens copy
    python -m em3_tf.data.build --interactions log.csv --items items.csv --out ... \\
        [--on-bad-rows drop] [--store sqlite:///artifacts/shop-store.db]   # a new store

Writes both split protocols (temporal, item_cold) and the data set's schema
(`<out>/schema.pbtxt`, from the features it declares; the pipeline validates against it),
checks every written split against that schema with TFDV, prints and saves summary.json (with
the data report of a generic log: every bad row found and what was done about it). The build
writes into a temporary directory that replaces `--out` only when everything succeeded, so a
failed build leaves no output behind. With `--store`, the behaviour store serving reads user
histories from is filled with the log. Works offline.
"""

import argparse
import os
import shutil
import sys

from em3_tf.data.splits import PROTOCOLS

SCHEMA_FILE = "schema.pbtxt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m em3_tf.data.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["ml-100k", "synthetic", "log"], default=None,
                   help="data source (default: ml-100k, or 'log' when --interactions is given)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ml100k-dir", help="a GroupLens or RecBole ml-100k directory")
    p.add_argument("--interactions", help="interaction log CSV/Parquet (with --items)")
    p.add_argument("--items", help="item catalog CSV/Parquet (with --interactions)")
    p.add_argument("--on-bad-rows", choices=["fail", "drop"], default="fail",
                   help="a generic log's bad rows (NaN labels, duplicates, unknown items, ...): "
                        "fail, naming them all (default), or drop them and report the counts")
    p.add_argument("--drop-columns", default="",
                   help="comma-separated columns of your tables to drop (any other column "
                        "the model does not read is refused)")
    p.add_argument("--store", help="behaviour store URL to fill with the interactions "
                                   "(sqlite:///path.db or redis://host:port/0)")
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


def load_tables(args):
    """`(tables, name, report)` of the chosen source (`report`: a generic log's
    `DataReport`, else None)."""
    from em3_tf.data import movielens
    if (args.source or ("log" if args.interactions else "ml-100k")) == "log":
        if not (args.interactions and args.items):
            raise SystemExit("--interactions and --items are both needed for a generic log.")
        tables, report = movielens.load_interaction_log(
            args.interactions, args.items, args.on_bad_rows, args.label_threshold,
            [c.strip() for c in args.drop_columns.split(",") if c.strip()])
        return tables, "log", report
    return movielens.load_ml100k(args.ml100k_dir), "ml-100k", None


def build_all(args, tables=None, name=None):
    """One `RankingData` per protocol for the chosen source."""
    common = dict(max_history_len=args.max_history_len, seed=args.seed)
    if args.source == "synthetic":
        from em3_tf.data.synthetic import make_synthetic
        return [make_synthetic(protocol=p, cold_fraction=args.cold_fraction, **common)
                for p in PROTOCOLS]
    from em3_tf.data import movielens
    if tables is None:
        tables, name, _ = load_tables(args)
    return [movielens.build(tables, protocol=p, label_threshold=args.label_threshold,
                            fractions=tuple(args.fractions), cold_fraction=args.cold_fraction,
                            text_preset=args.text_preset, text_length=args.text_length,
                            cache_dir=args.cache_dir, name=name, **common)
            for p in PROTOCOLS]


def data_schema(data, max_history_len):
    """The schema of `data`'s examples: the known one of MovieLens-100K and SYNTHETIC (with
    their value domains), else one made from the features the data set declares."""
    from em3_tf.data import schema
    if data.name in ("ml-100k", "synthetic"):
        return schema.load_schema(os.path.join(
            schema.SCHEMA_DIR, "synthetic.pbtxt" if data.name == "synthetic" else "schema.pbtxt"))
    return schema.make_schema(data.context_features, max_history_len=max_history_len,
                              string_ids=data.string_ids)


def write(datasets, out, args, report=None):
    """Writes every protocol, the schema and summary.json into `out`; returns the summary."""
    import tensorflow_data_validation as tfdv

    from em3_tf.data import records, schema
    summary = records.write_dataset(datasets, out, extra={"data_report": report.to_dict()}
                                    if report is not None else None)
    known = data_schema(datasets[0], args.max_history_len)
    tfdv.write_schema_text(known, os.path.join(out, SCHEMA_FILE))
    if not args.no_check:
        for data in datasets:
            for split in ("train", "eval", "test"):
                schema.check_records(
                    os.path.join(out, data.protocol, split, records.FILE_NAME), known)
        print("schema check: every split conforms", flush=True)
    return summary


def replace_dir(tmp: str, out: str) -> None:
    """Moves the finished build `tmp` to `out`, replacing an earlier build there."""
    old = out.rstrip("/") + ".old-build"
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def fill_store(url: str, tables, label_threshold) -> int:
    """Appends the interactions, as training sees them, to the behaviour store at `url`,
    which must be empty: filling it twice would repeat every event in every history."""
    from em3_tf.behaviour_store import fill_from_columns, open_store
    from em3_tf.data.movielens import interaction_columns
    columns, _ = interaction_columns(tables, label_threshold)
    with open_store(url) as store:
        if store.id_type() is not None:
            raise SystemExit(f"--store {url} already holds events: filling it again would "
                             f"repeat them in every history. Give a new store (or delete this "
                             f"one) to fill it from the log.")
        fill_from_columns(store, columns)
    return len(columns[next(iter(columns))])


def summary_lines(summary) -> list:
    """A few lines of `summary.json`: examples, users, items and cold rows per split."""
    lines = [f"{summary['data']}: {summary['catalog_items']} catalog items"]
    for protocol, splits in summary["protocols"].items():
        parts = [f"{name} {s['examples']} ({s['users']} users, {s['items']} items, "
                 f"{s['cold_item_rows']} cold-item rows)"
                 for name, s in splits.items() if isinstance(s, dict)]
        lines.append(f"  {protocol}: " + "; ".join(parts))
    return lines


def main(argv=None):
    args = parse_args(argv)
    tables = name = report = None
    if args.source != "synthetic":
        tables, name, report = load_tables(args)
        if report is not None:
            print("data report:\n  " + "\n  ".join(report.lines()), flush=True)
    datasets = build_all(args, tables, name)
    tmp = args.out.rstrip("/") + ".tmp-build"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    try:
        summary = write(datasets, tmp, args, report)
        if args.store and tables is not None:  # before the output is replaced
            added = fill_store(args.store, tables, args.label_threshold)
            print(f"behaviour store {args.store}: {added} interactions added", flush=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, args.out)
    print("\n".join(summary_lines(summary)))
    print(f"wrote {args.out} (details: {os.path.join(args.out, 'summary.json')})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
