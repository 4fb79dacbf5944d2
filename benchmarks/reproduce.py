"""Reproduce the README's results: quality table, cost curves, plots (about 45-60 minutes on
2 CPU cores).

    ./setup.sh && .venv/bin/python -m benchmarks.reproduce [--quick]

Runs, in order: the MovieLens-100K build (if missing), `bench_quality` (7 variants x 3 seeds x
2 protocols, 2 epochs each), `bench_model` (throughput and history-branch cost curves) and
`report` (PNG plots, README blocks). Interrupted runs resume: finished quality runs are kept in
benchmarks/results/quality_runs.jsonl. `--quick` runs one seed and fewer steps (a smoke run; its
numbers are not the recorded ones).
"""

import argparse
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    from benchmarks import bench_model, bench_quality, report
    start = time.perf_counter()
    seeds = ["0"] if args.quick else ["0", "1", "2"]
    print("== quality: variants x seeds x protocols on MovieLens-100K", flush=True)
    bench_quality.main(["--seeds", *seeds, "--out", args.out, "--save-embeddings"])
    print(f"== cost curves ({time.perf_counter() - start:.0f}s so far)", flush=True)
    bench_model.main((["--quick"] if args.quick else []) + ["--out", f"{args.out}/model.json"])
    print(f"== plots and README ({time.perf_counter() - start:.0f}s so far)", flush=True)
    report.main(["--results", args.out])
    print(f"reproduced in {time.perf_counter() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
