"""Reproduce the README's results: quality table, serving and pipeline figures, cost curves, plots.

    ./setup.sh && .venv/bin/python -m benchmarks.reproduce [--quick]

Runs, in order: the MovieLens-100K build (if missing); `bench_quality --tune --sweep
id_dropout --sweep-values 0.3 0.5 --adopt` (every variant tuned with the same budget where no
recorded hyper-parameters exist, then its ID dropout tried at its recorded value, 0.3 and 0.5,
and the best recorded; trials already in `sweep_id_dropout.json` are not re-run), then the
same for modality dropout at its recorded value, 0.3 and 0.5 (the content variants; the
sweeps are `bench_quality.SWEEPS`);
`bench_quality` (5 seeds x 2 protocols with the recorded values); `bench_serving`;
`bench_pipeline`; `bench_model` (throughput and history-branch cost curves); and `report` (PNG
plots, README blocks). Interrupted runs resume: finished quality runs are kept in
benchmarks/results/quality_runs.jsonl, sweep trials in benchmarks/results/sweep_<knob>.json,
tuned values in pipelines/hyperparameters/ml-100k/ (with another `--out`, a copy of them in
`<out>/hyperparameters`, so the recorded ones are never rewritten). From scratch, the tuning
searches ID dropout over (0, 0.05, 0.15, 0.3, 0.5) and modality dropout over (0, 0.1, 0.3,
0.5) before the sweeps; the recorded values were tuned over (0, 0.05, 0.15) and without
modality dropout, and then swept: the same budget, not the same history. Measured
by parts on 2 CPU cores: tuning, the sweeps and 10 runs take about 10 minutes for an ID-only
variant, 25 for frozen content and 50 for an EM3 variant, so the 10 default variants take
about 6 hours from scratch. The serving, pipeline and cost benchmarks add about 20
minutes. `--quick` runs one seed, four variants and two tuning trials, without the sweep, into
`--out` (default benchmarks/results-quick): a smoke run whose numbers are not the recorded
ones.
"""

import argparse
import os
import shutil
import sys
import time

from benchmarks import RESULTS, recorded_hyperparameters


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="results directory (default: benchmarks/results, "
                                               "or benchmarks/results-quick with --quick)")
    args = p.parse_args(argv)
    out = args.out or ("benchmarks/results-quick" if args.quick else RESULTS)
    from benchmarks import bench_model, bench_pipeline, bench_quality, bench_serving, report
    start = time.perf_counter()
    quality = ["--out", out]
    if args.quick or os.path.abspath(out) != os.path.abspath(RESULTS):
        # another results directory never rewrites the recorded values: it tunes (--quick)
        # or sweeps and adopts (a full run, from a copy of the recorded values) in its own
        hyperparameters = os.path.join(out, "hyperparameters")
        if not args.quick and not os.path.exists(hyperparameters):
            shutil.copytree(recorded_hyperparameters(), hyperparameters)
        quality += ["--hyperparameters-dir", hyperparameters]
    if args.quick:  # tuned within the table's run, no sweep
        quality += ["--seeds", "0", "--max-trials", "2", "--presets", "id_dcn", "id_din",
                    "frozen_content", "em3", "--tune"]
    else:
        tune = ["--tune"]  # before the first sweep
        for name, values in bench_quality.SWEEPS.items():
            print(f"== quality: {'tuning and ' * bool(tune)}the {name} sweep on "
                  "MovieLens-100K", flush=True)
            bench_quality.main(quality + tune + ["--sweep", name, "--sweep-values",
                                                 *map(str, values), "--adopt"])
            tune = []
    print(f"== quality: variants x seeds x protocols ({time.perf_counter() - start:.0f}s so far)",
          flush=True)
    bench_quality.main(quality + ["--save-embeddings"])
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
