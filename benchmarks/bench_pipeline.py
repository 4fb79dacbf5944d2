"""Wall time of the default pipeline from raw data (not a test).

    .venv/bin/python -m benchmarks.bench_pipeline [--out benchmarks/results/pipeline_run.json]

Builds MovieLens-100K and runs `pipelines.local_runner` with its defaults in a fresh work
directory (`artifacts/bench-pipeline`, deleted first; the MiniLM catalog cache is kept only if
`--keep-cache`), and records wall times, the evaluation summary and the machine.
"""

import argparse
import json
import os
import shutil
import sys
import time

from benchmarks import machine


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/pipeline_run.json")
    p.add_argument("--work", default="artifacts/bench-pipeline")
    p.add_argument("--keep-cache", action="store_true")
    args = p.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    data = os.path.join(args.work, "ml-100k")
    cache = "artifacts/cache" if args.keep_cache else os.path.join(args.work, "cache")
    from em3_tf.data import build
    from pipelines import local_runner
    start = time.perf_counter()
    build.main(["--out", data, "--cache-dir", cache])
    built = time.perf_counter()
    local_runner.main(["--data", data, "--work-dir", os.path.join(args.work, "tfx"),
                       "--serving-dir", os.path.join(args.work, "serving")])
    end = time.perf_counter()
    with open(os.path.join(args.work, "tfx", "em3-ml100k", "last_run.json")) as f:
        summary = json.load(f)
    run = {"machine": machine(),
           "wall_seconds": round(end - start, 1), "build_seconds": round(built - start, 1),
           "pipeline_seconds": round(end - built, 1), "evaluation": summary["evaluation"],
           "blessed": summary.get("blessed"), "pushed": summary.get("pushed")}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(run, f, indent=2)
    print(json.dumps(run, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
