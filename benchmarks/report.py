"""Plots and README tables from the benchmarks' own output files (no hand-typed numbers).

    .venv/bin/python -m benchmarks.report [--results benchmarks/results] [--readme README.md]

Reads `quality.json`, `quality_runs.jsonl`, `model.json`, `codes.json`, `long_history.json`,
`embeddings.npz` and `pipeline_run.json` where present, writes `auc_bars.png`,
`cost_curves.png`, `retrieval.png`, `codes.png`, `long_history.png`, `embeddings.png`, and
replaces the README blocks between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers.
"""

import argparse
import json
import os
import re
import sys

from benchmarks import RESULTS

LABELS = {"id_dcn": "ID-only DCN", "id_din": "ID-only DIN",
          "frozen_content": "frozen content (same tokens, live history, CIC)",
          "frozen_content_no_cic": "frozen content, no CIC", "em3": "EM3",
          "em3_full_cost": "EM3 without the cost levers (raw tokens, LoRA everywhere)",
          "em3_no_qformer": "EM3 w/o Q-Former", "em3_no_lora": "EM3 w/o LoRA",
          "em3_no_cic": "EM3 w/o CIC", "em3_no_feedback": "EM3 w/o feedback",
          "em3_cached": "EM3, cached history",
          "em3_live": "EM3, no content table (Q-Former per request)"}
# (protocol, column title, metric) of the two quality tables
QUALITY_COLUMNS = {
    "temporal": [("AUC", "auc"), ("GAUC", "gauc"), ("log-loss", "logloss"),
                 ("AUC warm items", "warm_auc"), ("AUC new users", "new_user_auc"),
                 ("AUC returning users", "returning_user_auc")],
    "item_cold": [("AUC", "auc"), ("AUC cold items", "cold_auc"),
                  ("log-loss cold items", "cold_logloss"), ("AUC warm items", "warm_auc"),
                  ("AUC new users", "new_user_auc"), ("AUC returning users",
                                                      "returning_user_auc")]}
HEADLINE = {"temporal": "auc", "item_cold": "cold_auc"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(entry, metric, digits=4):
    if metric not in entry:
        return "-"
    m = entry[metric]
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}" if m["n"] > 1 else \
        f"{m['mean']:.{digits}f}"


def _paired(entry, metric):
    """`+0.0012 (p 0.03)`: the variant minus EM3, mean over seeds, paired t-test."""
    paired = entry.get("paired", {}).get(metric)
    if not paired:
        return "reference" if "paired" not in entry else "-"
    p = paired["p_value"]
    return f"{100 * paired['mean_diff']:+.2f} pt" + (f" (p {p:.3f})" if p is not None else "")


def quality_markdown(result) -> str:
    lines = [f"Machine: {result.get('machine', 'not recorded')}. Data: {result['data']} "
             f"(MovieLens-100K), test split. Each run: at most {result['max_epochs']} epochs, "
             f"early stopping on eval AUC (patience {result['patience']}), batch "
             f"{result['batch_size']}; hyper-parameters tuned per variant on the temporal eval "
             f"split ({result['tuning']['max_trials']} random trials each"
             + "".join(f", then `{name}` swept with the other values fixed, one trial per "
                       f"value, the best kept" for name in result["tuning"].get("sweeps", {}))
             + f"). Seeds {result['seeds']}: mean ± std; Δ = variant minus EM3, paired by "
               f"seed, with a paired t-test."]
    for protocol, columns in QUALITY_COLUMNS.items():
        rows = result["table"].get(protocol)
        if not rows:
            continue
        headline = HEADLINE[protocol]
        title = dict((m, t) for t, m in columns)[headline]
        lines += ["", f"**{protocol}** protocol:", "",
                  "| variant | " + " | ".join(t for t, _ in columns)
                  + f" | Δ {title} vs EM3 | epochs | train s |",
                  "|---" * (len(columns) + 4) + "|"]
        for preset in result["presets"]:
            entry = rows.get(preset)
            if entry is None:
                continue
            lines.append(f"| {LABELS.get(preset, preset)} | "
                         + " | ".join(_cell(entry, m) for _, m in columns)
                         + f" | {_paired(entry, headline)} | "
                         f"{_cell(entry, 'epochs_trained', 1)} | "
                         f"{_cell(entry, 'train_seconds', 0)} |")
    return "\n".join(lines)


def model_markdown(results) -> str:
    reference = next((r["examples_per_second"] for r in results["throughput"]
                      if r["preset"] == "id_dcn" and not r.get("overrides")), float("nan"))
    rounds = results["throughput"][0].get("rounds", 1) if results["throughput"] else 1
    lines = [f"Machine: {results['machine']}; data: {results.get('data', 'SYNTHETIC')}; "
             f"{rounds} round-robin round(s) per variant", "",
             "| model | training examples/s (batch 256, history 50; median) | vs ID-only DCN "
             "(median of per-round ratios) | per-round ratio range |", "|---|---|---|---|"]
    for r in results["throughput"]:
        ratios = r.get("per_round_ratio_to_id_dcn") or [r["examples_per_second"] / reference]
        ratio = r.get("ratio_to_id_dcn", ratios[0])
        lines.append(f"| {r.get('variant', LABELS.get(r['preset'], r['preset']))} | "
                     f"{r['examples_per_second']} | {ratio:.2f}x | "
                     f"{min(ratios):.2f}x - {max(ratios):.2f}x |")
    lines += ["", "History branch alone (batch 16, forward + backward + Adam, no de-duplication):",
              "", "| history length | mode | step ms (median) | peak RSS growth MB | "
                  "trainable params reached |", "|---|---|---|---|---|"]
    lines += [f"| {r['history_length']} | {r['mode']} | {r['step_ms_median']} | "
              f"{r['peak_rss_growth_mb']} | {r['trainable_params_reached']} |"
              for r in results["history_branch"]]
    if results.get("retrieval"):
        lines += ["", "Long histories: the exact LoRA branch over all L items vs codebook "
                      "retrieval of 50 then the LoRA branch, both with the dot-product content "
                      "attention (batch 16, forward + backward + Adam; recall@50 against the "
                      "exact attention's top 50, with codes fit on the model as built, and "
                      "after the timed steps without a refit):", "",
                  "| history length | branch | step ms (median) | peak RSS growth MB | "
                  "recall@50 as built | recall@50 after the steps |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['history_length']} | "
                  f"{'PQ top-50 + LoRA' if r['mode'] == 'pq' else 'exact LoRA'} | "
                  f"{r['step_ms_median']} | {r['peak_rss_growth_mb']} | "
                  f"{r.get('recall_at_50_as_built', '')} | "
                  f"{r.get('recall_at_50_after_steps', '')} |" for r in results["retrieval"]]
    return "\n".join(lines)


def serving_markdown(result) -> str:
    request = (f"; requests: one user with {result['history_entries']} history entries"
               if "history_entries" in result else "")
    lines = [f"Machine: {result['machine']}; server: {result['server']}{request}", "",
             "| model | request format | candidates / request | concurrency | p50 ms | p99 ms | "
             "requests/s | candidates/s | errors |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {LABELS.get(r['model'], r['model'])} | {r.get('format', 'flat')} | "
              f"{r['candidates']} | {r['concurrency']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['requests_per_s']} | {r['candidates_per_s']} | {r['errors']} |"
              for r in result["rows"]]
    ratios = serving_ratios(result)
    if ratios:
        lines += ["", "Ratios from this run (100 candidates per request, concurrency 1):", ""]
        lines += [f"- {text}: {value:.2f}x" for text, value in ratios.items()]
    return "\n".join(lines)


def serving_ratios(result):
    """The ratios the serving targets are stated in, from one run's rows."""
    def row(model, fmt, concurrency=1):
        return next((r for r in result["rows"] if r["model"] == model and r["candidates"] == 100
                     and r["concurrency"] == concurrency and r.get("format", "flat") == fmt),
                    None)
    out = {}
    for fmt in ("flat", "context"):
        em3, base, live = row("em3", fmt), row("id_dcn", fmt), row("em3_live", fmt)
        din = row("id_din", fmt)
        if em3 and base:
            out[f"EM3 p99 / ID-only DCN p99 ({fmt})"] = em3["p99_ms"] / base["p99_ms"]
        if live and base:
            out[f"EM3 without content table p99 / ID-only DCN p99 ({fmt})"] = (
                live["p99_ms"] / base["p99_ms"])
        if em3 and din:
            out[f"EM3 p99 / ID-only DIN p99 ({fmt})"] = em3["p99_ms"] / din["p99_ms"]
    for model in ("em3", "id_dcn", "id_din"):
        flat, context = row(model, "flat"), row(model, "context")
        if flat and context:
            out[f"{LABELS.get(model, model)} candidates/s, context / flat"] = (
                context["candidates_per_s"] / flat["candidates_per_s"])
    return out


def plot_auc_bars(result, path):
    plt = _pyplot()
    presets = result["presets"]
    panels = [("temporal", "auc", "Test AUC, temporal protocol (all rows)"),
              ("item_cold", "cold_auc", "Test AUC on cold-item rows, item-cold protocol")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, (protocol, metric, title) in zip(axes, panels):
        rows = result["table"].get(protocol, {})
        names = [p for p in presets if p in rows]
        means = [rows[p][metric]["mean"] for p in names]
        stds = [rows[p][metric]["std"] for p in names]
        colors = ["#999999" if p.startswith("id_") else "#4c72b0" if p == "em3" else "#8fb0d9"
                  for p in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=colors)
        ax.set_xticks(range(len(names)), [LABELS.get(p, p) for p in names], rotation=30,
                      ha="right")
        low = min(m - s for m, s in zip(means, stds)) if means else 0.5
        ax.set_ylim(max(0.4, low - 0.02), max(means) + 0.02 if means else 1)
        ax.set_title(title)
        ax.set_ylabel("AUC (mean ± std over seeds)")
    _save(fig, path)


def plot_cost_curves(results, path):
    plt = _pyplot()
    rows = results["history_branch"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for mode, style in (("full", "o-"), ("lora", "s-"), ("cache", "^-")):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["history_length"])
        x = [r["history_length"] for r in mine]
        axes[0].plot(x, [r["step_ms_median"] for r in mine], style, label=mode)
        axes[1].plot(x, [r["peak_rss_growth_mb"] for r in mine], style, label=mode)
        axes[2].bar(mode, mine[0]["trainable_params_reached"] if mine else 0)
    for ax, title in zip(axes[:2], ("step time (ms)", "peak RSS growth (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("history length")
        ax.set_title(f"History branch {title}")
        ax.legend()
    axes[2].set_title("Parameters the history branch trains")
    axes[2].set_yscale("log")
    fig.suptitle(results["machine"], fontsize=9)
    _save(fig, path)


def codes_markdown(result) -> str:
    lines = ([f"Machine: {result['machine']}; data: `{result['data']}`.", ""]
             if "machine" in result else [])
    lines += ["| representation | codebook | collision rate | utilisation per level | "
              "distinct code prefixes (1 / 2 / 3 levels) | "
              "residual error after each level (relative) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['levels']} x {r['codebook_size']} | "
              f"{r['collision_rate']:.4f} | "
              + " / ".join(f"{u:.2f}" for u in r["utilisation"]) + " | "
              + " / ".join(str(n) for n in r.get("distinct_prefixes", [])) + " | "
              + " / ".join(f"{e:.3f}" for e in r["relative_residual_error"]) + " |"
              for r in result["rows"]]
    return "\n".join(lines)


def plot_codes(result, path):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for source, style in (("content", "o-"), ("aligned", "s--"), ("em3", "^-.")):
        mine = [r for r in result["rows"] if r["source"] == source]
        axes[0].plot([r["codebook_size"] for r in mine], [r["collision_rate"] for r in mine],
                     style, label=source)
        for r in mine:
            axes[1].plot(range(1, r["levels"] + 1), r.get("distinct_prefixes", []), style,
                         label=f"{source}, {r['codebook_size']} centroids")
    items = result["rows"][0]["items"]
    axes[1].axhline(items, color="grey", lw=0.8, ls=":")
    axes[0].set(xscale="log", xlabel="centroids per level", ylabel="collision rate",
                title="Items sharing their full 3-level code")
    axes[1].set(yscale="log", xlabel="code levels", xticks=[1, 2, 3],
                ylabel="distinct code prefixes",
                title=f"Distinct code prefixes (dotted: {items} items)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"RQ-KMeans codes of the MovieLens-100K catalog; {result['machine']}",
                 fontsize=9)
    _save(fig, path)


CODES_QUALITY_ROWS = (  # (preset, paired with, label)
    ("em3", "em3", "EM3 (`em3`)"),
    ("em3_sid", "em3", "EM3 + codes of the co-engagement-aligned content (`em3_sid`)"),
    ("em3_sid_own", "em3", "EM3 + codes of EM3's own trained content (`em3_sid_own`)"),
    ("id_dcn", "id_dcn", "ID-only DCN (`id_dcn`)"),
    ("sid_dcn", "id_dcn", "codes instead of item ids (`sid_dcn`)"))


def codes_quality(runs):
    """`[(preset, reference, label, entry)]`: the semantic-id presets' item_cold results from
    the quality runs (each preset's newest settings), paired by seed with their reference."""
    from benchmarks.bench_quality import aggregate
    cold = [r for r in runs if r["protocol"] == "item_cold"]
    newest = {r["preset"]: r["config_key"] for r in cold}  # each preset's latest settings
    rows = list({(r["preset"], r["seed"]): r for r in cold
                 if r["config_key"] == newest[r["preset"]]}.values())
    out = []
    for preset, reference, label in CODES_QUALITY_ROWS:
        entry = aggregate(rows, [reference, preset], ["item_cold"], reference)[
            "item_cold"].get(preset)
        if entry is not None:
            out.append((preset, reference, label, entry))
    return out


def codes_quality_markdown(table) -> str:
    """Cold-item quality of the semantic ids (`codes_quality`): EM3 + codes vs EM3 and codes
    vs the ID-only DCN, item_cold protocol, paired by seed."""
    lines = ["| model | AUC | cold-item AUC | warm-item AUC | paired cold-item difference |",
             "|---|---|---|---|---|"]
    for _, reference, label, entry in table:
        paired = entry.get("paired", {}).get("cold_auc")
        versus = "reference" if paired is None else (
            f"{_paired(entry, 'cold_auc')} vs {reference}, better in "
            f"{paired['n'] - paired['reference_wins']} of {paired['n']} seeds")
        lines.append(f"| {label} | {_cell(entry, 'auc')} | {_cell(entry, 'cold_auc')} | "
                     f"{_cell(entry, 'warm_auc')} | {versus} |")
    return "\n".join(lines)


def plot_codes_quality(table, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    names = [preset for preset, *_ in table]
    for shift, metric, title in ((-0.2, "cold_auc", "cold-item rows"),
                                 (0.2, "warm_auc", "warm-item rows")):
        means = [entry[metric]["mean"] for *_, entry in table]
        stds = [entry[metric]["std"] for *_, entry in table]
        ax.bar([k + shift for k in range(len(names))], means, 0.4, yerr=stds, capsize=3,
               label=title)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    low = min(entry["cold_auc"]["mean"] for *_, entry in table)
    ax.set(ylim=(low - 0.03, None), ylabel="test AUC (mean ± std over seeds)",
           title="Semantic ids on the item_cold protocol (MovieLens-100K)")
    ax.legend(fontsize=8)
    _save(fig, path)


LONG_HISTORY_LABELS = {
    "em3": ("50", "MLP (DIN)", "-"), "em3_dot": ("50", "dot", "-"),
    "em3_dot_L500": ("500", "dot", "- (exact)"), "em3_pq_L500": ("500", "dot", "PQ top 50")}


def long_history_markdown(result) -> str:
    recalls = result.get("retrieval_recall_at_50") or []
    lines = [f"Machine: {result['machine']}. Data: MovieLens-100K with whole histories "
             f"(`{result['data']}`), {result['protocol']} protocol, test split; seeds "
             f"{result['seeds']}, at most {result['max_epochs']} epochs with early stopping on "
             "eval; for every row, EM3's recorded hyper-parameters when these runs were made ("
             + ", ".join(f"{k} {v}" for k, v in sorted(result.get("hyperparameters", {}).items()))
             + "); Δ vs `em3`, paired by seed. "
             "(No time column: these runs shared the CPU with other jobs; the cost of "
             "retrieval is measured alone under \"Cost\".)",
             "", "| variant | history length | content attention | retrieval | AUC | "
                 "AUC returning users | AUC new users | Δ AUC | Δ AUC returning users |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, entry in result["table"].items():
        length, scorer, retrieval = LONG_HISTORY_LABELS.get(label, ("?", "?", "?"))
        lines.append(f"| `{label}` | {length} | {scorer} | {retrieval} | {_cell(entry, 'auc')} "
                     f"| {_cell(entry, 'returning_user_auc')} | {_cell(entry, 'new_user_auc')} "
                     f"| {_paired(entry, 'auc')} | {_paired(entry, 'returning_user_auc')} |")
    if recalls:
        lines += ["", f"Recall@K (K = 50) of the trained `em3_pq_L500` retrieval against its "
                      f"exact attention's top K (test rows with more than K history items): "
                      f"{min(recalls):.3f} to {max(recalls):.3f} over the seeds."]
    return "\n".join(lines)


def plot_long_history(result, path):
    plt = _pyplot()
    labels = list(result["table"])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.38
    for shift, metric, title in ((-width / 2, "auc", "all test rows"),
                                 (width / 2, "returning_user_auc", "returning users")):
        means = [result["table"][k][metric]["mean"] for k in labels]
        stds = [result["table"][k][metric]["std"] for k in labels]
        ax.bar([i + shift for i in range(len(labels))], means, width, yerr=stds, capsize=3,
               label=title)
    ax.set_xticks(range(len(labels)), labels)
    low = min(result["table"][k][m]["mean"] for k in labels
              for m in ("auc", "returning_user_auc"))
    ax.set_ylim(low - 0.02, None)
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title("Whole MovieLens-100K histories: L=50 vs L=500, exact vs PQ retrieval")
    ax.legend()
    _save(fig, path)


def plot_retrieval(results, path):
    plt = _pyplot()
    rows = results["retrieval"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, style, label in (("exact", "o-", "exact LoRA branch"),
                               ("pq", "s-", "PQ top-50 + LoRA branch")):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["history_length"])
        x = [r["history_length"] for r in mine]
        axes[0].plot(x, [r["step_ms_median"] for r in mine], style, label=label)
        if mode == "pq":
            for key, line, label in (("recall_at_50_as_built", style, "codes fit on the model"),
                                     ("recall_at_50_after_steps", "^--",
                                      "after the timed steps, not refit")):
                axes[1].plot(x, [r.get(key, float("nan")) for r in mine], line, label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="history length", ylabel="ms per step",
                title="Training step time")
    axes[1].axhline(0.9, color="grey", lw=0.8, ls=":")
    axes[1].set(xscale="log", xlabel="history length", ylabel="recall@50",
                title="Retrieved vs exact attention top 50", ylim=(0, 1.02))
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(results["machine"], fontsize=9)
    _save(fig, path)


def plot_embeddings(npz_path, path):
    plt = _pyplot()
    import numpy as np
    from sklearn.manifold import TSNE
    data = np.load(npz_path)
    genre = data["genre"].astype(str)
    top = [g for g, _ in sorted(zip(*np.unique(genre, return_counts=True)),
                                key=lambda t: -t[1])[:6]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, key, title in ((axes[0], "before", "Before: frozen pre-extracted content"),
                           (axes[1], "after", "After: EM3 content embedding (end to end)")):
        points = TSNE(n_components=2, random_state=0, init="pca",
                      perplexity=30).fit_transform(data[key].astype(np.float32))
        for g in top:
            rows = genre == g
            ax.scatter(points[rows, 0], points[rows, 1], s=6, label=g, alpha=0.7)
        rest = ~np.isin(genre, top)
        ax.scatter(points[rest, 0], points[rest, 1], s=4, c="#cccccc", label="other", alpha=0.5)
        ax.set_title(title)
        ax.set_xticks([]), ax.set_yticks([])
    axes[1].legend(markerscale=3, fontsize=8, title="first listed genre")
    fig.suptitle("t-SNE of MovieLens-100K item content embeddings", fontsize=10)
    _save(fig, path)


def replace_block(text, name, body):
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no <!-- {name}:start --> ... <!-- {name}:end --> block.")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=RESULTS)
    p.add_argument("--readme", default="README.md")
    args = p.parse_args(argv)
    r = args.results
    with open(args.readme) as f:
        readme = f.read()

    def load(name):
        path = os.path.join(r, name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    quality, model = load("quality.json"), load("model.json")
    pipeline, serving = load("pipeline_run.json"), load("serving.json")
    if serving:
        readme = replace_block(readme, "serving-bench", serving_markdown(serving))
    if quality:
        plot_auc_bars(quality, os.path.join(r, "auc_bars.png"))
        readme = replace_block(readme, "results", quality_markdown(quality)
                               + f"\n\n![AUC per variant]({r}/auc_bars.png)")
    if model:
        plot_cost_curves(model, os.path.join(r, "cost_curves.png"))
        readme = replace_block(readme, "model-bench", model_markdown(model)
                               + f"\n\n![History-branch cost]({r}/cost_curves.png)"
                               + (f"\n\n![Codebook retrieval]({r}/retrieval.png)"
                                  if os.path.exists(os.path.join(r, "retrieval.png"))
                                  else ""))
    if model and any(r["mode"] == "exact" for r in model.get("retrieval", [])):
        plot_retrieval(model, os.path.join(r, "retrieval.png"))
    codes, long_history = load("codes.json"), load("long_history.json")
    if codes:
        plot_codes(codes, os.path.join(r, "codes.png"))
        readme = replace_block(readme, "codes", codes_markdown(codes)
                               + f"\n\n![Codebook collisions and utilisation]({r}/codes.png)")
    runs = os.path.join(r, "quality_runs.jsonl")
    if os.path.exists(runs):
        with open(runs) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        table = codes_quality(rows)
        if table:
            plot_codes_quality(table, os.path.join(r, "codes_quality.png"))
            readme = replace_block(readme, "codes-quality", codes_quality_markdown(table)
                                   + f"\n\n![Semantic ids, cold items]({r}/codes_quality.png)")
    if long_history:
        plot_long_history(long_history, os.path.join(r, "long_history.png"))
        readme = replace_block(readme, "long-history", long_history_markdown(long_history)
                               + f"\n\n![Long histories]({r}/long_history.png)")
    if os.path.exists(os.path.join(r, "embeddings.npz")):
        plot_embeddings(os.path.join(r, "embeddings.npz"), os.path.join(r, "embeddings.png"))
        readme = replace_block(readme, "embeddings",
                               f"![Item content embeddings]({r}/embeddings.png)")
    if pipeline:
        readme = replace_block(readme, "pipeline-run", pipeline_markdown(pipeline))
    with open(args.readme, "w") as f:
        f.write(readme)
    print(f"updated {args.readme} and the plots in {r}")
    return 0


def pipeline_markdown(run) -> str:
    ev = run["evaluation"]
    lines = [f"Default run (`python -m pipelines.local_runner`, MovieLens-100K, item-cold "
             f"protocol, eval split) on {run['machine']}: wall time {run['wall_seconds']:.0f} s "
             f"from raw data (data build {run['build_seconds']:.0f} s included); "
             f"blessed: {run['blessed']}, pushed: {run['pushed']}.", "",
             "| slice | examples | AUC | log-loss | calibration |", "|---|---|---|---|---|"]
    for name in ev:
        m = ev.get(name) or {}
        lines.append(f"| {name} | {m.get('example_count', 0):.0f} | {m.get('auc', 0):.4f} | "
                     f"{m.get('binary_crossentropy', 0):.4f} | {m.get('calibration', 0):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
