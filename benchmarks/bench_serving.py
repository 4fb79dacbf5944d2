"""Serving latency and throughput over gRPC (not a test).

    .venv/bin/python -m benchmarks.bench_serving [--out benchmarks/results/serving.json]

Trains EM3 and the ID-only DCN and DIN baselines for one epoch on MovieLens-100K (item_cold
split) and exports them under a temporary base directory: EM3 twice, with the export-time content table
(`em3`, the default export) and without it (`em3_live`: the Fusion-Q-Former runs over the
candidates and the history on every request, as exports did before). Serves them with the
local stand-in server (`serving.local_server`, `serving/batching_parameters.txt`) on loopback
and sends Predict requests through `serving.client.EM3Client`: one user with 1, 10 or 100
candidates per request, from 1 or 8 concurrent clients, in both request formats (`flat`: one
full tf.Example per candidate; `context`: one ExampleListWithContext), for a bounded number of
requests. Reports p50 / p99 latency (ms), requests/s and candidates/s, all from one run. Run
`--target HOST:PORT` to measure a real TF Serving instead (serving models named `em3`,
`em3_live`, `id_dcn` and `id_din`). The ID-only DIN has one target attention over the
history (EM3 has two, the ID-only DCN none): the targets compare EM3 with the DCN, and the
DIN shows how much of that gap any history attention costs.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

from benchmarks import machine

MODELS = ("em3", "em3_live", "id_dcn", "id_din")
CANDIDATES = (1, 10, 100)
CONCURRENCY = (1, 8)
FORMATS = ("flat", "context")


def export_models(data_dir, base):
    from em3_tf._tf import tf
    from em3_tf.config import EM3Config
    from em3_tf.data.records import load_dataset
    from em3_tf.export import export_saved_model
    from em3_tf.training import build_ranker, fit

    data = load_dataset(data_dir, "item_cold")
    for preset in ("em3", "id_dcn", "id_din"):
        tf.keras.utils.set_random_seed(0)
        model = build_ranker(EM3Config.preset(preset, context_features=data.context_features),
                             data)
        print(f"training {preset} (1 epoch) for the serving benchmark ...", flush=True)
        fit(model, data, epochs=1, verbose=0, patience=None)
        export_saved_model(model, os.path.join(base, preset, "1"), model_name=preset)
        if preset == "em3":
            export_saved_model(model, os.path.join(base, "em3_live", "1"),
                               model_name="em3_live", content_table=False)
    return data


def measure(target, model_name, user, items, candidates, concurrency, requests_per_client,
            request_format):
    from serving.client import EM3Client
    latencies, errors = [], []
    lock = threading.Lock()

    def worker(seed):
        rng = np.random.default_rng(seed)
        with EM3Client(target, model_name, timeout_s=30, request_format=request_format) as client:
            client.rank(user, list(items[:candidates]))  # warm the channel
            for _ in range(requests_per_client):
                chosen = [int(i) for i in rng.choice(items, candidates, replace=False)]
                start = time.perf_counter()
                try:
                    client.rank(user, chosen)
                except Exception as error:  # noqa: BLE001 - counted, not hidden
                    with lock:
                        errors.append(str(error))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"model": model_name, "format": request_format, "candidates": candidates,
            "concurrency": concurrency,
            "requests": len(latencies), "errors": len(errors),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "requests_per_s": round(len(latencies) / wall, 1),
            "candidates_per_s": round(len(latencies) * candidates / wall, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="artifacts/ml-100k")
    p.add_argument("--out", default="benchmarks/results/serving.json")
    p.add_argument("--target", help="measure an already running server instead")
    p.add_argument("--requests", type=int, default=400, help="requests per client thread "
                                                             "at concurrency 1 (divided by 4 at 8)")
    args = p.parse_args(argv)
    from em3_tf import features as F
    from em3_tf.data import records
    from serving.demo import pick_request

    if not os.path.exists(os.path.join(args.data, "summary.json")):
        from em3_tf.data import build
        build.main(["--out", args.data])
    server, base = None, tempfile.mkdtemp(prefix="em3-serving-bench-")
    target, described = args.target, f"external server at {args.target}"
    if target is None:
        from serving.local_server import serve
        from serving.stand_in.batching import BatchingParameters
        from tensorflow_serving.config import model_server_config_pb2
        export_models(args.data, base)
        config = model_server_config_pb2.ModelServerConfig()
        for name in MODELS:
            config.model_config_list.config.add(name=name, base_path=os.path.join(base, name),
                                                model_platform="tensorflow")
        batching = BatchingParameters.from_file(
            os.path.join("serving", "batching_parameters.txt"))
        server = serve(config, port=0, batching=batching)
        described = (f"serving.local_server (stand-in), batching max {batching.max_batch_size}"
                     f" / {batching.batch_timeout_micros} us window / "
                     f"{batching.num_batch_threads} threads, loopback")
        target = f"127.0.0.1:{server.port}"
    # The test split's cold items are unknown to the ID-only model (scored as its OOV item,
    # on purpose): the client's per-request UnknownItemWarning would be timed with it.
    from serving.client import UnknownItemWarning
    warnings.simplefilter("ignore", UnknownItemWarning)
    # A user with the data's longest history: what a long-history request costs, and the
    # same request length whichever user a rebuilt data set puts first.
    user, _ = pick_request(args.data, min_history=None)
    test = records.read_split(args.data, "item_cold", "test")
    items = np.unique(test[F.ITEM_ID])
    rows = []
    try:
        # Models and formats interleaved, case by case, so that the machine's drift over the
        # run hits every ratio's two sides alike (the formats used to run one after the
        # other, minutes apart: one such run's context / flat ratio was 1.45x, the next 2.06x).
        for candidates in CANDIDATES:
            for concurrency in CONCURRENCY:
                for model_name in MODELS:
                    for request_format in FORMATS:
                        n = args.requests if concurrency == 1 else max(1, args.requests // 4)
                        row = measure(target, model_name, user, items, candidates, concurrency,
                                      n, request_format)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        rows.sort(key=lambda r: (MODELS.index(r["model"]), FORMATS.index(r["format"])))
    finally:
        if server is not None:
            server.stop(0)
    result = {"machine": machine(),
              "server": described,
              "history_entries": len(user[F.HISTORY]),
              "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    from benchmarks.report import serving_markdown
    print(serving_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
