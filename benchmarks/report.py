"""Plots and README tables from the benchmarks' own output files (no hand-typed numbers).

    .venv/bin/python -m benchmarks.report [--results benchmarks/results] [--readme README.md]

Reads `quality.json`, `model.json`, `embeddings.npz` and `pipeline_run.json` where present,
writes `auc_bars.png`, `cost_curves.png`, `embeddings.png`, and replaces the README blocks
between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers.
"""

import argparse
import json
import os
import re
import sys

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
             f"split ({result['tuning']['max_trials']} random trials each). Seeds "
             f"{result['seeds']}: mean ± std; Δ = variant minus EM3, paired by seed, with a "
             f"paired t-test."]
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
    lines = [f"Machine: {results['machine']}; data: {results.get('data', 'SYNTHETIC')}", "",
             "| model | training examples/s (batch 256, history 50) | vs ID-only DCN |",
             "|---|---|---|"]
    lines += [f"| {r.get('variant', LABELS.get(r['preset'], r['preset']))} | "
              f"{r['examples_per_second']} | {r['examples_per_second'] / reference:.2f}x |"
              for r in results["throughput"]]
    lines += ["", "History branch alone (batch 16, forward + backward + Adam, no de-duplication):",
              "", "| history length | mode | step ms (median) | peak RSS growth MB | "
                  "trainable params reached |", "|---|---|---|---|---|"]
    lines += [f"| {r['history_length']} | {r['mode']} | {r['step_ms_median']} | "
              f"{r['peak_rss_growth_mb']} | {r['trainable_params_reached']} |"
              for r in results["history_branch"]]
    if results.get("retrieval"):
        lines += ["", "Long histories: the exact LoRA branch over all L items vs codebook "
                      "retrieval of 50 then the LoRA branch (batch 16, forward + backward + "
                      "Adam; recall@50 of the retrieved items on the model as built):", "",
                  "| history length | branch | step ms (median) | peak RSS growth MB | "
                  "recall@50 vs attention top-50 | recall@50 vs inner-product top-50 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['history_length']} | {'PQ top-50 + LoRA' if r['mode'] == 'pq' else 'exact LoRA'}"
                  f" | {r['step_ms_median']} | {r['peak_rss_growth_mb']} | "
                  f"{r.get('recall_at_50_vs_attention', '')} | "
                  f"{r.get('recall_at_50_vs_inner_product', '')} |"
                  for r in results["retrieval"]]
    return "\n".join(lines)


def serving_markdown(result) -> str:
    lines = [f"Machine: {result['machine']}; server: {result['server']}", "",
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
        if em3 and base:
            out[f"EM3 p99 / ID-only p99 ({fmt})"] = em3["p99_ms"] / base["p99_ms"]
        if live and base:
            out[f"EM3 without content table p99 / ID-only p99 ({fmt})"] = (
                live["p99_ms"] / base["p99_ms"])
    for model in ("em3", "id_dcn"):
        flat, context = row(model, "flat"), row(model, "context")
        if flat and context:
            out[f"{LABELS.get(model, model)} candidates/s, context / flat"] = (
                context["candidates_per_s"] / flat["candidates_per_s"])
    return out


def plot_auc_bars(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost_curves(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_embeddings(npz_path, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replace_block(text, name, body):
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no <!-- {name}:start --> ... <!-- {name}:end --> block.")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="benchmarks/results")
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
                               + f"\n\n![History-branch cost]({r}/cost_curves.png)")
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
