"""Offline ranking metrics: AUC, GAUC (per-user AUC averaged over users) and log-loss, and the
popularity baseline that a model must beat to be blessed by default."""

from typing import Dict, Optional

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def auc(labels, scores) -> float:
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def gauc(labels, scores, users) -> float:
    """Per-user AUC averaged over users with both classes, weighted by their example count."""
    labels, scores, users = map(np.asarray, (labels, scores, users))
    total, weight = 0.0, 0
    order = np.argsort(users, kind="stable")
    ordered = users[order]  # ids may be strings
    bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    for rows in np.split(order, bounds):
        if 0 < labels[rows].sum() < len(rows):
            total += len(rows) * roc_auc_score(labels[rows], scores[rows])
            weight += len(rows)
    return total / weight if weight else float("nan")


def ranking_report(labels, scores, users, slices: Optional[Dict[str, np.ndarray]] = None
                   ) -> Dict[str, float]:
    """AUC, GAUC and log-loss overall, and `<slice>_examples`, `<slice>_auc` and
    `<slice>_logloss` for each boolean row mask of `slices` (e.g. `{"cold": ..., "warm":
    ...}`)."""
    labels, scores = np.asarray(labels), np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
    report = {"examples": int(len(labels)), "auc": auc(labels, scores),
              "gauc": gauc(labels, scores, users), "logloss": float(log_loss(labels, scores,
                                                                         labels=[0, 1]))}
    for name, rows in (slices or {}).items():
        rows = np.asarray(rows, bool)
        report[f"{name}_examples"] = int(rows.sum())
        report[f"{name}_auc"] = auc(labels[rows], scores[rows]) if rows.any() else float("nan")
        report[f"{name}_logloss"] = (float(log_loss(labels[rows], scores[rows], labels=[0, 1]))
                                     if rows.any() else float("nan"))
    return report


def popularity_auc(train_items, train_labels, items, labels) -> float:
    """AUC of the popularity baseline: each item scored by its smoothed training click rate
    `(positives + 1) / (interactions + 2)`, an item without training rows by 0.5.

    This is the pipeline's default AUC floor (`pipelines.config.PipelineConfig.value_floor`):
    a model that ranks no better than item popularity is not worth serving, on any data.
    """
    ids, index = np.unique(np.asarray(train_items), return_inverse=True)
    rate = (np.bincount(index, weights=np.asarray(train_labels, float)) + 1) / (
        np.bincount(index) + 2)
    position = np.clip(np.searchsorted(ids, items), 0, len(ids) - 1)
    known = ids[position] == np.asarray(items)
    value = auc(labels, np.where(known, rate[position], 0.5))
    return 0.5 if np.isnan(value) else value  # an eval split of one class: chance
