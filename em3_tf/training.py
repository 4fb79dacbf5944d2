"""Train and evaluate an `EM3Ranker` on a `RankingData`: used by the CLI, benchmarks and TFX.

The training protocol, the same for every variant:
  - Adam at `config.learning_rate`, constant or with linear warm-up and cosine decay over the
    planned steps (`config.lr_schedule`); the content encoder's weights can get their own
    learning rate (`config.content_lr_scale`, through `tfrs.experimental.optimizers.
    CompositeOptimizer`);
  - up to `epochs` epochs, early stopping on the eval split's AUC (`patience` epochs without
    improvement), the best epoch's weights restored. The test split is never looked at.
"""

import contextlib
import math
import os
import time
from typing import Dict, Optional

import numpy as np

from em3_tf import features as F
from em3_tf._tf import keras, tf, tfrs
from em3_tf.config import EM3Config
from em3_tf.data.dataset import RankingData
from em3_tf.evaluation import ranking_report
from em3_tf.models.ranker import EM3Ranker


def learning_rate(config: EM3Config, total_steps: Optional[int], scale: float = 1.0):
    """The learning rate (a float or a schedule) of `config` over `total_steps` steps."""
    peak = config.learning_rate * scale
    if config.lr_schedule == "constant" or not total_steps:
        return peak
    warmup = int(config.warmup_fraction * total_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak, decay_steps=max(1, total_steps - warmup),
        warmup_target=peak if warmup else None, warmup_steps=warmup)


class CompositeOptimizer(tfrs.experimental.optimizers.CompositeOptimizer):
    """TFRS's `CompositeOptimizer` (one optimizer per group of variables) whose
    `apply_gradients` returns the grouped update op, as Keras' `LossScaleOptimizer` needs
    to wrap it under mixed precision (TFRS's returns None)."""

    def apply_gradients(self, grads_and_vars, name=None, experimental_aggregate_gradients=True):
        grads_and_vars = list(grads_and_vars)
        groups = {}
        for optimizer, variables in self._optimizers_and_vars:
            mine = {v.ref() for v in variables()}
            groups[optimizer] = [(g, v) for g, v in grads_and_vars if v.ref() in mine]
        handled = sum(len(pairs) for pairs in groups.values())
        if handled != len(grads_and_vars):
            raise ValueError(f"{len(grads_and_vars) - handled} variable(s) are handled by no "
                             f"optimizer, or by more than one.")
        updates = [optimizer.apply_gradients(
            pairs, name=name, experimental_aggregate_gradients=experimental_aggregate_gradients)
            for optimizer, pairs in groups.items() if pairs]
        return tf.group(*[u for u in updates if u is not None])


def make_optimizer(config: EM3Config, model: EM3Ranker, total_steps: Optional[int] = None):
    """Adam with `config`'s schedule; a `CompositeOptimizer` when the content encoder has its
    own learning rate scale."""
    if config.content_lr_scale == 1.0 or model.content is None:
        return keras.optimizers.Adam(learning_rate(config, total_steps))

    def content(in_group):  # resolved when gradients are applied: layers build lazily
        def variables():
            ids = {id(v) for v in model.content.trainable_variables}
            return [v for v in model.trainable_variables if (id(v) in ids) == in_group]
        return variables

    return CompositeOptimizer([
        (keras.optimizers.legacy.Adam(learning_rate(config, total_steps,
                                                    config.content_lr_scale)), content(True)),
        (keras.optimizers.legacy.Adam(learning_rate(config, total_steps)), content(False))])


def compile_ranker(config: EM3Config, vocabularies, catalog, strategy=None,
                   total_steps: Optional[int] = None) -> EM3Ranker:
    """A compiled `EM3Ranker`, created under `strategy`'s scope if given; `total_steps` is the
    planned number of training steps (for the learning-rate schedule)."""
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = EM3Ranker(config, vocabularies, catalog)
        model.compile(optimizer=make_optimizer(config, model, total_steps))
    return model


def build_ranker(config: EM3Config, data: RankingData, strategy=None, epochs=None,
                 batch_size=256) -> EM3Ranker:
    """`compile_ranker` with `data`'s training vocabularies and item catalog (and the steps of
    `epochs` epochs of `batch_size` for the schedule)."""
    steps = (epochs * math.ceil(len(data.splits["train"][F.ITEM_ID]) / batch_size)
             if epochs else None)
    return compile_ranker(config, data.vocabularies(), data.catalog, strategy, steps)


def callbacks(patience: Optional[int] = None, log_dir: Optional[str] = None,
              checkpoint_dir: Optional[str] = None):
    """The training callbacks: early stopping on `val_auc` (if `patience`), TensorBoard logs
    and per-epoch weight checkpoints (if their directories are given). (`EM3Ranker.fit` adds
    the content cache refresh after them, so the restored weights are the ones cached.)"""
    out = []
    if patience:
        out.append(keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                                 patience=patience, restore_best_weights=True))
    if log_dir:
        out.append(keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    if checkpoint_dir:
        out.append(keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoint_dir, "ckpt-{epoch:03d}"), save_weights_only=True))
    return out


def fit(model: EM3Ranker, data: RankingData, epochs=5, batch_size=256, seed=0, verbose=1,
        patience: Optional[int] = 1, log_dir: Optional[str] = None,
        checkpoint_dir: Optional[str] = None) -> keras.callbacks.History:
    """`model.fit` on the train split (shuffled with `seed`), validating on eval after every
    epoch, early stopping on eval AUC with `patience` (None: train all `epochs`)."""
    return model.fit(
        data.dataset("train", batch_size, shuffle=True, seed=seed), epochs=epochs,
        validation_data=data.dataset("eval", 1024),
        callbacks=callbacks(patience, log_dir, checkpoint_dir), verbose=verbose)


def predict(model: EM3Ranker, data: RankingData, split: str, batch_size=1024) -> np.ndarray:
    return model.predict(data.dataset(split, batch_size, with_label=False), verbose=0)


def evaluate(model: EM3Ranker, data: RankingData, split="test") -> Dict[str, float]:
    """`ranking_report` of `split`: overall and per slice (cold/warm items, new/returning
    users)."""
    part = data.splits[split]
    return ranking_report(part[F.LABEL], predict(model, data, split), part[F.USER_ID],
                          data.slices(split))


def train_and_evaluate(config: EM3Config, data: RankingData, epochs=5, batch_size=256, seed=0,
                       verbose=1, patience: Optional[int] = 1, split="test", **fit_kwargs):
    """Seeds everything, builds, fits (early stopping on eval) and evaluates `split`; returns
    `(model, report)` with the epochs trained and the best epoch in the report."""
    keras.utils.set_random_seed(seed)
    model = build_ranker(config, data, epochs=epochs, batch_size=batch_size)
    start = time.perf_counter()
    history = fit(model, data, epochs=epochs, batch_size=batch_size, seed=seed, verbose=verbose,
                  patience=patience, **fit_kwargs)
    seconds = time.perf_counter() - start
    report = evaluate(model, data, split)
    val_auc = history.history.get("val_auc", [])
    report.update(train_seconds=round(seconds, 2), epochs_trained=len(val_auc),
                  best_epoch=int(np.argmax(val_auc)) + 1 if val_auc else None,
                  eval_auc=float(max(val_auc)) if val_auc else None)
    return model, report
