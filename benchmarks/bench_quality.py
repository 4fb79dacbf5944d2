"""Quality benchmark on real data: every variant x seed x split protocol, with `model.fit`.

    .venv/bin/python -m benchmarks.bench_quality --tune        # tune, then the full table
    .venv/bin/python -m benchmarks.bench_quality --presets id_din em3 --seeds 0   # quick
    .venv/bin/python -m benchmarks.bench_quality --sweep content_lr_scale   # one knob, on eval
    .venv/bin/python -m benchmarks.bench_quality --sweep id_dropout --sweep-values 0.3 0.5 --adopt

Protocol, the same for every variant (each row of the table changes one factor from EM3):
  1. `--tune`: KerasTuner random search (`em3_tf.tuning`) of each variant on the temporal
     protocol's eval split, `--max-trials` trials of at most `--epochs` epochs with early
     stopping, seed 0; the best values are recorded in
     `pipelines/hyperparameters/ml-100k/<preset>/best_hyperparameters.txt` (which the TFX
     pipeline imports too) and the search in `<out>/tuning.json`. Without `--tune`, recorded values
     are used where present. `--sweep NAME --adopt` then tries one knob at other values, the
     rest fixed, with the same trials for every variant, and records each one's best.
  2. Each variant x seed x protocol trains for at most `--epochs` epochs with early stopping on
     the eval split's AUC (best weights restored) and is scored once on the test split: AUC,
     GAUC, log-loss, overall and on the slices cold / warm items and new / returning users.
  3. Aggregates: mean ± std over seeds, and for every variant the per-seed paired difference
     to EM3 with a paired t-test.

Every finished run is appended to `<out>/quality_runs.jsonl` at once (keyed by its config),
so an interrupted benchmark resumes. `<out>/quality.json` holds the aggregates of the full
table (a run of fewer presets or protocols prints its table and leaves that file alone).
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from typing import Dict

DEFAULT_PRESETS = ("id_dcn", "id_din", "frozen_content", "frozen_content_no_cic", "em3",
                   "em3_full_cost", "em3_no_qformer", "em3_no_lora", "em3_no_cic",
                   "em3_no_feedback")
# The one-knob sweeps `benchmarks.reproduce` runs after tuning, in order, with the values
# tried besides each preset's recorded one.
SWEEPS = {"id_dropout": (0.3, 0.5), "modality_dropout": (0.3, 0.5)}
REFERENCE = "em3"
SLICES = ("cold", "warm", "new_user", "returning_user")
METRICS = ("auc", "gauc", "logloss") + tuple(f"{s}_{m}" for s in SLICES
                                           for m in ("auc", "logloss", "examples"))
PAIRED = ("auc", "gauc", "logloss") + tuple(f"{s}_auc" for s in SLICES)


def parse_args(argv=None):
    from benchmarks import RESULTS, recorded_hyperparameters
    from em3_tf.tuning import SEARCH_SPACE
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="artifacts/ml-100k")
    p.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--protocols", nargs="+", default=["temporal", "item_cold"],
                   choices=["temporal", "item_cold"])
    p.add_argument("--epochs", type=int, default=4, help="at most this many epochs per run")
    p.add_argument("--patience", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tune", action="store_true",
                   help="tune every preset that has no recorded hyper-parameters yet")
    p.add_argument("--max-trials", type=int, default=6, help="tuning budget per variant")
    p.add_argument("--hyperparameters-dir",
                   default=recorded_hyperparameters())
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--save-embeddings", action="store_true")
    p.add_argument("--sweep", choices=sorted(SEARCH_SPACE), metavar="NAME",
                   help="instead of the table: each preset with its recorded hyper-parameters "
                        "and NAME set to each value of the search space (or --sweep-values) "
                        "and its recorded value in turn, trained as a tuning trial (temporal "
                        "eval split, seed 0); writes <out>/sweep_<NAME>.json, resumable")
    p.add_argument("--sweep-values", nargs="+", type=float, metavar="V",
                   help="with --sweep: these values (each preset's recorded value is always "
                        "added) instead of the search space's, e.g. to try beyond its range")
    p.add_argument("--adopt", action="store_true",
                   help="with --sweep: record each preset's best value of NAME (eval AUC) in "
                        "its recorded hyper-parameters, for the table to use")
    args = p.parse_args(argv)
    if (args.sweep_values or args.adopt) and not args.sweep:
        p.error("--sweep-values and --adopt need --sweep NAME")
    return args


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_json(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def _append_jsonl(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def config_key(config) -> str:
    """A short hash of the config's non-default fields, so a field added later with a default
    that keeps the old behaviour leaves recorded runs valid. A field whose default changes
    what a variant does (e.g. `modality_dropout`, unread by the pooled encoders until
    2026-12-08) needs the variant's preset to state its old value, and its recorded runs
    re-keyed, as done for the pooled presets."""
    defaults = type(config)().get_config()
    changed = {k: v for k, v in config.get_config().items() if defaults[k] != v}
    return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:12]


def tune_presets(args, data):
    """Tunes each preset without recorded hyper-parameters; returns the tuning records."""
    from em3_tf._tf import keras
    from em3_tf.config import EM3Config
    from em3_tf.tuning import read_hyperparameters, searched, tune, write_hyperparameters

    records = {}
    for preset in args.presets:
        directory = os.path.join(args.hyperparameters_dir, preset)
        if read_hyperparameters(directory):
            print(f"tuning {preset}: recorded in {directory}", flush=True)
            continue
        base = EM3Config.preset(preset, context_features=data.context_features)
        start = time.perf_counter()
        print(f"tuning {preset}: {args.max_trials} trials over {list(searched(base))} ...",
              flush=True)
        best = tune(base, data, max_trials=args.max_trials, epochs=args.epochs,
                    batch_size=args.batch_size, seed=0,
                    directory=os.path.join("runs", "tuning"), project_name=preset)
        write_hyperparameters(best, directory)
        records[preset] = {"values": best.values, "trials": args.max_trials,
                           "epochs": args.epochs, "protocol": data.protocol,
                           "seconds": round(time.perf_counter() - start, 1)}
        print(f"tuning {preset}: best {best.values} ({records[preset]['seconds']:.0f}s)",
              flush=True)
        keras.backend.clear_session()
    return records


def sweep(args, data):
    """Sweeps one knob, `args.sweep`, for each preset that searches it, and writes
    `<out>/sweep_<NAME>.json` after every trial.

    Each value (the search space's, or `args.sweep_values`; the preset's recorded value
    always) is one tuning trial (the same training and score as `em3_tf.tuning.tune`'s), every
    other hyper-parameter at its recorded value: `best_eval_auc[preset][value]`. A rerun keeps
    a preset's trials while `trial_key[preset]` (`_trial_key`: its config but the knob and the
    knobs swept after it, epochs, batch size, data) is unchanged, so that a later sweep's
    adoption does not void an earlier sweep; `later[preset]` holds the values those later
    knobs had in its trials, and new trials of a kept sweep run with those values, so that
    all of a sweep's trials differ in the knob only. A trial that another knob's sweep already
    ran (the same config, epochs, batch size and data: its recorded value's) is reused, not
    re-run. With `args.adopt`, a preset's best value among all its trials is written to its
    recorded hyper-parameters and to `adopted[preset]`."""
    from benchmarks import machine
    from em3_tf._tf import keras
    from em3_tf.config import EM3Config
    from em3_tf.tuning import (OBJECTIVE, SEARCH_SPACE, hyperparameters, read_hyperparameters,
                               searched, train_trial, write_hyperparameters)
    name = args.sweep
    path = os.path.join(args.out, f"sweep_{name}.json")
    result = {"machine": machine(), "data": args.data, "protocol": "temporal (eval split)",
              "seed": 0, "max_epochs": args.epochs, "name": name, "trial_key": {},
              "later": {}, "best_eval_auc": {}, "adopted": {}}
    previous = _read_json(path)
    for field in ("trial_key", "later", "best_eval_auc", "adopted"):
        result[field].update(previous.get(field, {}))
    for preset in args.presets:
        directory = os.path.join(args.hyperparameters_dir, preset)
        tuned = read_hyperparameters(directory)
        base = EM3Config.preset(preset, context_features=data.context_features, **tuned)
        if name not in searched(base):
            print(f"sweep {name}: {preset} does not search it, skipped", flush=True)
            continue
        recorded = getattr(base, name)
        key, later = _trial_key(args, base, name), {k: getattr(base, k)
                                                    for k in _swept_after(name)}
        if result["trial_key"].get(preset) != key or (later and preset not in result["later"]):
            result["trial_key"][preset], result["best_eval_auc"][preset] = key, {}
            result["later"][preset] = later
            result["adopted"].pop(preset, None)
        result["later"].setdefault(preset, later)  # {}: no knob is swept after this one
        # a kept sweep's new trials run as its old ones did: the later knobs as they were then
        trial_base = base.replace(**result["later"][preset])
        scores = result["best_eval_auc"][preset]
        for value in sorted(set(args.sweep_values or SEARCH_SPACE[name]) | {recorded}):
            if str(value) in scores:
                continue
            begin, config = time.perf_counter(), trial_base.replace(**{name: value})
            score, source = _swept_trial(args, preset, config), "reused"
            if score is None:
                history = train_trial(config, data, args.epochs, args.batch_size, seed=0)
                score = max(history.history[OBJECTIVE])
                source = f"{time.perf_counter() - begin:.0f}s"
                keras.backend.clear_session()
            scores[str(value)] = score
            _write_json(path, result)
            print(f"sweep {name}: {preset} {name}={value} (recorded: {recorded}): best eval "
                  f"AUC {score:.4f} ({source})", flush=True)
        best = float(max(scores, key=scores.get))
        if args.adopt:
            if best != recorded:
                hp = hyperparameters(base)
                hp.values.update({**tuned, name: best})
                write_hyperparameters(hp, directory)
                print(f"sweep {name}: {preset} now records {name}={best}", flush=True)
            result["adopted"][preset] = best
    _write_json(path, result)


def _swept_after(name):
    """The knobs that `SWEEPS` sweeps after `name` (none for a knob outside it)."""
    order = list(SWEEPS)
    return order[order.index(name) + 1:] if name in order else []


def _trial_key(args, config, name):
    """What a sweep of `name` keeps its trials for: `config` but `name` and the knobs swept
    after it (at their defaults), with the epochs, batch size and data."""
    defaults = type(config)().get_config()
    knobs = [name] + _swept_after(name)
    return "/".join([config_key(config.replace(**{k: defaults[k] for k in knobs})),
                     str(args.epochs), str(args.batch_size), args.data])


def _swept_trial(args, preset, config):
    """The best eval AUC of the trial of exactly `config` (same epochs, batch size, data) in
    another sweep file of `args.out`, e.g. the recorded value's trial that the previous knob's
    sweep ran; None if no sweep ran it."""
    for file in sorted(os.listdir(args.out)):
        if not (file.startswith("sweep_") and file.endswith(".json")):
            continue
        other = _read_json(os.path.join(args.out, file))
        knob, keys = other.get("name"), other.get("trial_key", {})
        if knob in (None, args.sweep) or keys.get(preset) != _trial_key(args, config, knob):
            continue
        later = other.get("later", {}).get(preset, {})
        if all(k in later and later[k] == getattr(config, k) for k in _swept_after(knob)):
            score = other["best_eval_auc"][preset].get(str(getattr(config, knob)))
            if score is not None:
                return score
    return None


def adopted_sweeps(out) -> Dict:
    """`{knob: {preset: value}}`: what `sweep --adopt` wrote to the recorded
    hyper-parameters, from the sweep files in `out`."""
    found = {}
    for name in sorted(os.listdir(out)):
        if name.startswith("sweep_") and name.endswith(".json"):
            result = _read_json(os.path.join(out, name))
            if result.get("adopted"):
                found[result["name"]] = result["adopted"]
    return found


def aggregate(rows, presets, protocols, reference=REFERENCE):
    """`{protocol: {preset: {metric: {mean, std, n}, "paired": {metric: {...}}}}}`, each
    preset paired by seed with `reference`."""
    from scipy import stats
    table = {}
    for protocol in protocols:
        mine = {p: {r["seed"]: r for r in rows if r["protocol"] == protocol
                    and r["preset"] == p} for p in presets}
        for preset, runs in mine.items():
            if not runs:
                continue
            entry = {}
            for metric in METRICS + ("train_seconds", "epochs_trained"):
                values = [r[metric] for r in runs.values() if r.get(metric) is not None]
                if values:
                    entry[metric] = {"mean": statistics.fmean(values),
                                     "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                     "n": len(values)}
            base = mine.get(reference, {})
            seeds = sorted(set(runs) & set(base))
            if preset != reference and seeds:
                entry["paired"] = {}
                for metric in PAIRED:
                    diffs = [runs[s][metric] - base[s][metric] for s in seeds]
                    test = (stats.ttest_rel([runs[s][metric] for s in seeds],
                                            [base[s][metric] for s in seeds])
                            if len(seeds) > 1 else None)
                    entry["paired"][metric] = {
                        "mean_diff": statistics.fmean(diffs),
                        "std_diff": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                        "p_value": float(test.pvalue) if test is not None else None,
                        "reference_wins": int(sum(
                            (d > 0) if metric == "logloss" else (d < 0) for d in diffs)),
                        "n": len(seeds)}
            table.setdefault(protocol, {})[preset] = entry
    return table


def main(argv=None):
    args = parse_args(argv)
    from em3_tf._tf import tf
    from em3_tf.config import EM3Config
    from em3_tf.data.records import load_dataset
    from em3_tf.training import train_and_evaluate
    from em3_tf.tuning import SEARCH_SPACE, read_hyperparameters

    if not os.path.exists(os.path.join(args.data, "summary.json")):
        from em3_tf.data import build
        build.main(["--out", args.data])
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    tuning = {}
    if args.tune:
        tuning = tune_presets(args, load_dataset(args.data, "temporal"))
        if tuning:
            path = os.path.join(args.out, "tuning.json")
            previous = _read_json(path)
            _write_json(path, {**previous, **tuning})
    if args.sweep:
        sweep(args, load_dataset(args.data, "temporal"))
        return 0
    runs_file = os.path.join(args.out, "quality_runs.jsonl")
    done = {(r["protocol"], r["preset"], r["seed"], r["config_key"]): r
            for r in _read_jsonl(runs_file)}
    total = len(args.protocols) * len(args.presets) * len(args.seeds)
    count, rows = 0, []
    for protocol in args.protocols:
        data = load_dataset(args.data, protocol)
        for preset in args.presets:
            tuned = read_hyperparameters(os.path.join(args.hyperparameters_dir, preset))
            config = EM3Config.preset(preset, context_features=data.context_features, **tuned)
            for seed in args.seeds:
                count += 1
                key = (protocol, preset, seed, config_key(config))
                if key in done:
                    rows.append(done[key])
                    continue
                model, report = train_and_evaluate(
                    config, data, epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                    verbose=0, patience=args.patience)
                row = {"protocol": protocol, "preset": preset, "seed": seed,
                       "config_key": key[3], "hyperparameters": tuned,
                       "max_epochs": args.epochs, **report}
                _append_jsonl(runs_file, row)
                rows.append(row)
                print(f"[{count}/{total}] {protocol} {preset} seed {seed}: AUC "
                      f"{row['auc']:.4f}, cold {row['cold_auc']:.4f}, new users "
                      f"{row['new_user_auc']:.4f} (best epoch {row['best_epoch']}, "
                      f"{row['train_seconds']:.0f}s; {time.perf_counter() - start:.0f}s "
                      f"elapsed)", flush=True)
                if args.save_embeddings and protocol == "temporal" and preset == REFERENCE \
                        and seed == args.seeds[0]:
                    save_embeddings(model, data, os.path.join(args.out, "embeddings.npz"))
                tf.keras.backend.clear_session()
    from benchmarks import machine
    tuning_path = os.path.join(args.out, "tuning.json")
    result = {"machine": machine(), "data": args.data, "max_epochs": args.epochs,
              "patience": args.patience, "batch_size": args.batch_size, "seeds": args.seeds,
              "presets": args.presets, "protocols": args.protocols,
              "reference": REFERENCE, "tuning": {
                  "max_trials": args.max_trials, "protocol": "temporal (eval split)",
                  "search_space": {k: list(v) for k, v in SEARCH_SPACE.items()},
                  "records": _read_json(tuning_path), "sweeps": adopted_sweeps(args.out)},
              "seconds": round(time.perf_counter() - start, 1),
              "table": aggregate(rows, args.presets, args.protocols)}
    full = (set(DEFAULT_PRESETS) <= set(args.presets)
            and set(args.protocols) == {"temporal", "item_cold"}
            and set(args.seeds) >= {0, 1, 2, 3, 4})
    if full:
        with open(os.path.join(args.out, "quality.json"), "w") as f:
            json.dump(result, f, indent=2)
    else:  # a partial run keeps the full table's summary; its runs are in the runs file
        print(f"(a subset of the table: {runs_file} has the runs; quality.json is kept)")
    from benchmarks.report import quality_markdown
    print(quality_markdown(result))
    return 0


def save_embeddings(model, data, path):
    """Item content embeddings before (the masked mean of each modality's raw tokens,
    concatenated) and after EM3 training."""
    import numpy as np

    from em3_tf.layers.token_reduction import masked_mean
    catalog = data.catalog
    before = np.concatenate([masked_mean(catalog.tokens[n], catalog.masks[n], axis=1)
                             for n in catalog.tokens], axis=1)
    after = model.content.encode_all().numpy()[1:]  # row 0 is the unknown-item row
    np.savez(path, item_ids=catalog.item_ids, before=before, after=after,
             genre=catalog.metadata["main_genre"])


if __name__ == "__main__":
    sys.exit(main())
