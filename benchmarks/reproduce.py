"""Reproduce the README's results: quality table, serving and pipeline figures, cost curves, plots.

    ./setup.sh && .venv/bin/python -m benchmarks.reproduce [--quick]

Runs, in order: the MovieLens-100K build (if missing); `bench_quality --tune` (every variant
tuned with the same budget where no recorded hyper-parameters exist, then 5 seeds x 2
protocols); `bench_serving`; `bench_pipeline`; `bench_model` (throughput and history-branch
cost curves); and `report` (PNG plots, README blocks). Interrupted runs resume: finished quality
runs are kept in benchmarks/results/quality_runs.jsonl, tuned values in
pipelines/hyperparameters/ml-100k/. Measured by parts on 2 CPU cores: tuning plus 10 runs take
about 5 minutes for an ID-only variant, 10 for frozen content and 35 for an EM3 variant, so the
9 default variants take about 4 hours from scratch. The serving, pipeline and cost benchmarks
add about 20 minutes. `--quick` runs one seed, four variants and two tuning trials into
`--out` (default benchmarks/results-quick): a smoke run whose numbers are not the recorded ones.
"""

import argparse
import os
import shutil
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="results directory (default: benchmarks/results, "
                                               "or benchmarks/results-quick with --quick)")
    args = p.parse_args(argv)
    out = args.out or ("benchmarks/results-quick" if args.quick else "benchmarks/results")
    from benchmarks import bench_model, bench_pipeline, bench_quality, bench_serving, report
    start = time.perf_counter()
    quality = ["--tune", "--out", out, "--save-embeddings"]
    if args.quick:
        quality += ["--seeds", "0", "--max-trials", "2", "--presets", "id_dcn", "id_din",
                    "frozen_content", "em3", "--hyperparameters-dir", f"{out}/hyperparameters"]
    print("== quality: variants x seeds x protocols on MovieLens-100K", flush=True)
    bench_quality.main(quality)
    print(f"== serving ({time.perf_counter() - start:.0f}s so far)", flush=True)
    bench_serving.main(["--out", f"{out}/serving.json"]
                       + (["--requests", "20"] if args.quick else []))
    print(f"== pipeline ({time.perf_counter() - start:.0f}s so far)", flush=True)
    bench_pipeline.main(["--out", f"{out}/pipeline_run.json", "--keep-cache"])
    print(f"== cost curves ({time.perf_counter() - start:.0f}s so far)", flush=True)
    bench_model.main((["--quick"] if args.quick else []) + ["--out", f"{out}/model.json"])
    print(f"== plots and README ({time.perf_counter() - start:.0f}s so far)", flush=True)
    readme = "README.md"
    if args.quick:  # a smoke run never overwrites the recorded README blocks
        readme = shutil.copy("README.md", os.path.join(out, "README-quick.md"))
    report.main(["--results", out, "--readme", readme])
    print(f"reproduced in {time.perf_counter() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
