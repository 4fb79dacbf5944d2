"""Model cost benchmark (not a test): training throughput and history-branch cost.

    .venv/bin/python -m benchmarks.bench_model [--quick] [--out benchmarks/results/model.json]

1. Training throughput (examples/second, `model.fit` after a 10-step warm-up, each variant in
   its own process) on MovieLens-100K's temporal training split (batch 256, history 50,
   tuned hyper-parameters): the ID-only baselines, frozen content, EM3 without its cost
   levers (`em3_full_cost`), each lever alone, EM3, and EM3 without item de-duplication.
   The variants run round-robin `--rounds` times (so that a slow spell of a shared machine
   hits every variant alike); each row reports the median examples/s, and its ratio to the
   ID-only DCN is the median over rounds of the ratio within the round, with its range.
2. The history branch alone (history content encoding + content-interest attention, forward,
   backward and Adam update) for history lengths 50, 200, 1000 and 2000: LoRA (only adapters train,
   base weights stop-gradient) vs full training vs frozen cache; median step time, peak
   resident memory growth, and trainable parameters. Each case runs in its own process so that
   peak memory is its own. History items are NOT de-duplicated here (`dedupe_history=False`),
   as in a production catalog where the items of a batch's histories rarely repeat.
3. Long histories (SEMINAR's codebook retrieval, `em3_pq`): the exact LoRA branch over all L
   history items vs PQ retrieval of the top 50 then the LoRA branch over those 50, for
   L = 200, 1000 and 5000, both with the dot-product content attention that the retrieval
   estimates (the one difference between them is the retrieval): median step time, peak
   memory growth, and recall@50 of the retrieved items against the exact top 50 of the
   content attention's logits, on the model as built (codes fit on it) and again after the
   timed training steps (codes not refit: what a refit cadence lets drift).
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
RETRIEVAL_LENGTHS = (200, 1000, 5000)
RETRIEVAL_MODES = ("exact", "pq")  # dot attention over all L / over the 50 PQ retrieves
RETRIEVAL_K = 50


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# (label, preset, overrides): the levers of issue 11, one at a time
THROUGHPUT_VARIANTS = (
    ("ID-only DCN", "id_dcn", {}),
    ("ID-only DIN", "id_din", {}),
    ("frozen content", "frozen_content", {}),
    ("EM3 without the levers (em3_full_cost)", "em3_full_cost", {}),
    ("em3_full_cost + token reduction (PCA 64, 8 segments)", "em3_full_cost",
     dict(token_dim=64, max_tokens=8)),
    ("em3_full_cost + LoRA in the output projection only", "em3_full_cost",
     dict(lora_scope="output")),
    ("both levers (em3 without shared fusion)", "em3", dict(share_fusion=False)),
    ("EM3 (both levers + shared fusion)", "em3", {}),
    ("EM3 without item de-duplication (so without shared fusion)", "em3",
     dict(dedupe_history=False)),
)


def throughput(data_dir, index, steps, batch_size=256):
    from em3_tf._tf import tf
    from em3_tf.config import EM3Config
    from em3_tf.data.records import load_dataset
    from em3_tf.training import build_ranker
    from em3_tf.tuning import read_hyperparameters

    label, preset, overrides = THROUGHPUT_VARIANTS[index]
    data = load_dataset(data_dir, "temporal")
    tuned = read_hyperparameters(os.path.join("pipelines", "hyperparameters", "ml-100k", preset))
    config = EM3Config.preset(preset, context_features=data.context_features,
                              **{**tuned, **overrides})
    tf.keras.utils.set_random_seed(0)
    model = build_ranker(config, data)
    ds = data.dataset("train", batch_size, shuffle=True).repeat()
    model.fit(ds, steps_per_epoch=10, epochs=1, verbose=0)  # trace and warm up
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"variant": label, "preset": preset, "overrides": overrides, "steps": steps,
            "batch_size": batch_size,
            "examples_per_second": round(steps * batch_size / seconds, 1)}


def throughput_rounds(data_dir, steps, rounds):
    """Every throughput variant, round-robin `rounds` times, each run in its own process;
    rows with the median examples/s and the per-round ratios to the ID-only DCN (the first
    variant)."""
    runs = [[] for _ in THROUGHPUT_VARIANTS]
    for round_ in range(rounds):
        for index, (label, _, _) in enumerate(THROUGHPUT_VARIANTS):
            runs[index].append(_child("throughput", [data_dir, index, steps]))
            print(f"throughput round {round_ + 1}/{rounds}: {label}: "
                  f"{runs[index][-1]['examples_per_second']} examples/s", flush=True)
    reference = [run["examples_per_second"] for run in runs[0]]
    rows = []
    for variant_runs in runs:
        speeds = [run["examples_per_second"] for run in variant_runs]
        ratios = [round(a / b, 3) for a, b in zip(speeds, reference)]
        rows.append({**variant_runs[0], "rounds": rounds,
                     "examples_per_second": round(statistics.median(speeds), 1),
                     "per_round_examples_per_second": speeds,
                     "ratio_to_id_dcn": round(statistics.median(ratios), 3),
                     "per_round_ratio_to_id_dcn": ratios})
    return rows


def history_branch(mode, length, steps, batch_size=16):
    import numpy as np

    from em3_tf import features as F
    from em3_tf._tf import keras, tf
    from em3_tf.config import EM3Config
    from em3_tf.data.synthetic import make_catalog
    from em3_tf.layers.codebook_retrieval import recall_at_k
    from em3_tf.models.ranker import EM3Ranker

    catalog, _ = make_catalog(5000, 16, seed=0)
    vocab = {F.USER_ID: np.arange(1, 11), F.ITEM_ID: catalog.item_ids}
    tf.keras.utils.set_random_seed(0)
    dot = mode in RETRIEVAL_MODES  # the long-history comparison: dot attention in both
    config = EM3Config.preset(
        "em3_full_cost", history_content="lora" if dot else mode, max_history_len=length,
        dedupe_history=False,  # LoRA everywhere
        **(dict(content_attention="dot", use_feedback=False) if dot else {}),
        **(dict(history_retrieval_k=RETRIEVAL_K) if mode == "pq" else {}))
    model = EM3Ranker(config, vocab, catalog)
    rng = np.random.default_rng(0)
    history = tf.constant(rng.choice(catalog.item_ids, size=[batch_size, length]))
    target = tf.constant(rng.choice(catalog.item_ids, size=[batch_size]))
    mask = tf.ones([batch_size, length], tf.bool)
    optimizer = keras.optimizers.Adam(1e-3)
    model.content(model.content.rows_of(target))
    if mode == "cache":
        model.refresh_content_cache()

    def recall():
        query, sequences = model.content(model.content.rows_of(target)), {F.HISTORY: history}
        return round(recall_at_k(model.retrieve(query, sequences),
                                 model.content_logits(query, sequences)), 4)

    if mode == "pq":
        model.refit_codebooks()
        recall_built = recall()

    def branch():
        query = tf.stop_gradient(model.content(model.content.rows_of(target)))
        if mode == "pq":
            return model._retrieved_interest(query, {F.HISTORY: history}, None, True,
                                             lambda x: x)
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
    recalls = {}
    if mode == "pq":
        recalls = {f"recall_at_{RETRIEVAL_K}_as_built": recall_built,
                   f"recall_at_{RETRIEVAL_K}_after_steps": recall()}
    return {"mode": mode, "history_length": length, "batch_size": batch_size,
            "step_ms_median": round(1000 * statistics.median(times), 1),
            "peak_rss_growth_mb": round(peak - base, 1),
            "trainable_params_reached": trained, **recalls}


def _child(kind, args):
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_model", "--child", kind,
                          *map(str, args)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--data", default="artifacts/ml-100k")
    parser.add_argument("--out", default="benchmarks/results/model.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3,
                        help="round-robin repetitions of the throughput variants "
                             "(--quick: 1)")
    parser.add_argument("--only", choices=["throughput", "history", "retrieval"],
                        help="run one part and update only its entry in --out")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.child:
        kind, *rest = args.child
        result = (throughput(rest[0], int(rest[1]), int(rest[2])) if kind == "throughput"
                  else history_branch(rest[0], int(rest[1]), int(rest[2])))
        print(json.dumps(result))
        return
    if args.only in (None, "throughput") and not os.path.exists(
            os.path.join(args.data, "summary.json")):  # only the throughput part reads it
        from em3_tf.data import build
        build.main(["--out", args.data])
    steps = 5 if args.quick else 100
    results = {"machine": machine(), "data": "MovieLens-100K, temporal train split",
               "throughput": [], "history_branch": [], "retrieval": []}
    if args.only and os.path.exists(args.out):
        with open(args.out) as f:
            results = {**results, **json.load(f), "machine": machine()}
    if args.only in (None, "throughput"):
        results["throughput"] = throughput_rounds(args.data, steps,
                                                  1 if args.quick else args.rounds)
    for part, lengths, modes in (("history", HISTORY_LENGTHS, MODES),
                                 ("retrieval", RETRIEVAL_LENGTHS, RETRIEVAL_MODES)):
        if args.only not in (None, part):
            continue
        key = "history_branch" if part == "history" else "retrieval"
        results[key] = []
        for length in lengths:
            for mode in modes:
                print(f"{part} {mode} L={length} ...", flush=True)
                results[key].append(_child("history", [mode, length, 3 if args.quick else 10]))
                print("  ", results[key][-1], flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    from benchmarks.report import model_markdown
    print(model_markdown(results))


if __name__ == "__main__":
    main()
