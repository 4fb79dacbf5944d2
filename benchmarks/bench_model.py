"""Model cost benchmark (not a test): training throughput and history-branch cost.

    .venv/bin/python -m benchmarks.bench_model [--quick] [--out benchmarks/results/model.json]

1. Training throughput (examples/second, after a warm-up) of EM3 vs the ID-only DCN baseline
   on SYNTHETIC data (batch 256, history 50).
2. The history branch alone (history content encoding + content-interest attention, forward,
   backward and Adam update) for history lengths 50, 200, 1000 and 2000: LoRA (only adapters train,
   base weights stop-gradient) vs full training vs frozen cache; median step time, peak
   resident memory growth, and trainable parameters. Each case runs in its own process so that
   peak memory is its own. History items are NOT de-duplicated here (`dedupe_history=False`),
   as in a production catalog where the items of a batch's histories rarely repeat.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks import machine

HISTORY_LENGTHS = (50, 200, 1000, 2000)
MODES = ("lora", "full", "cache")


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def throughput(preset, steps, batch_size=256):
    from em3_tf._tf import tf
    from em3_tf.config import EM3Config
    from em3_tf.data.synthetic import make_synthetic
    from em3_tf.training import build_ranker

    data = make_synthetic(num_users=1000, num_items=2000, interactions_per_user=(60, 120),
                          max_history_len=50, seed=0)
    tf.keras.utils.set_random_seed(0)
    model = build_ranker(EM3Config.preset(preset, max_history_len=50), data)
    ds = data.dataset("train", batch_size, shuffle=True).repeat()
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"preset": preset, "steps": steps, "batch_size": batch_size,
            "examples_per_second": round(steps * batch_size / seconds, 1)}


def history_branch(mode, length, steps, batch_size=16):
    import numpy as np

    from em3_tf import features as F
    from em3_tf._tf import keras, tf
    from em3_tf.config import EM3Config
    from em3_tf.data.synthetic import make_catalog
    from em3_tf.models.ranker import EM3Ranker

    catalog, _ = make_catalog(5000, 16, seed=0)
    vocab = {F.USER_ID: np.arange(1, 11), F.ITEM_ID: catalog.item_ids}
    tf.keras.utils.set_random_seed(0)
    config = EM3Config.preset("em3", history_content=mode, max_history_len=length,
                              dedupe_history=False)
    model = EM3Ranker(config, vocab, catalog)
    rng = np.random.default_rng(0)
    history = tf.constant(rng.choice(catalog.item_ids, size=[batch_size, length]))
    target = tf.constant(rng.choice(catalog.item_ids, size=[batch_size]))
    mask = tf.ones([batch_size, length], tf.bool)
    optimizer = keras.optimizers.Adam(1e-3)
    model.content(model.content.rows_of(target))
    if mode == "cache":
        model.refresh_content_cache()

    def branch():
        query = tf.stop_gradient(model.content(model.content.rows_of(target)))
        return model.content_attention(query, model._history_content(history, True), mask)

    branch()
    variables = model.content.trainable_variables + model.content_attention.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(branch() ** 2)
        grads = tape.gradient(loss, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        optimizer.apply_gradients(pairs)
        return loss

    base = _rss_mb()
    step()  # trace + first step
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step().numpy()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(branch() ** 2)
    grads = tape.gradient(loss, variables)
    trained = sum(int(np.prod(v.shape)) for g, v in zip(grads, variables) if g is not None)
    return {"mode": mode, "history_length": length, "batch_size": batch_size,
            "step_ms_median": round(1000 * statistics.median(times), 1),
            "peak_rss_growth_mb": round(peak - base, 1),
            "trainable_params_reached": trained}


def _child(kind, args):
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_model", "--child", kind,
                          *map(str, args)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--out", default="benchmarks/results/model.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = (throughput(rest[0], int(rest[1])) if kind == "throughput"
                  else history_branch(rest[0], int(rest[1]), int(rest[2])))
        print(json.dumps(result))
        return
    steps = 5 if args.quick else 30
    results = {"machine": machine(),
               "throughput": [], "history_branch": []}
    for preset in ("id_dcn", "em3"):
        print(f"throughput {preset} ...", flush=True)
        results["throughput"].append(_child("throughput", [preset, steps]))
        print("  ", results["throughput"][-1], flush=True)
    for length in HISTORY_LENGTHS:
        for mode in MODES:
            print(f"history branch {mode} L={length} ...", flush=True)
            results["history_branch"].append(
                _child("history", [mode, length, 3 if args.quick else 10]))
            print("  ", results["history_branch"][-1], flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    from benchmarks.report import model_markdown
    print(model_markdown(results))


if __name__ == "__main__":
    main()
