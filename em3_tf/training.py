"""Train and evaluate an `EM3Ranker` on a `RankingData`: used by the CLI, benchmarks and TFX."""

import contextlib
import os
import time
from typing import Dict, Optional

import numpy as np

from em3_tf import features as F
from em3_tf._tf import keras
from em3_tf.config import EM3Config
from em3_tf.data.dataset import RankingData
from em3_tf.evaluation import ranking_report
from em3_tf.models.ranker import EM3Ranker, RefreshContentCache


def compile_ranker(config: EM3Config, vocabularies, catalog, strategy=None) -> EM3Ranker:
    """A compiled `EM3Ranker` (Adam at `config.learning_rate`), created under `strategy`'s
    scope if given."""
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = EM3Ranker(config, vocabularies, catalog)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    return model


def build_ranker(config: EM3Config, data: RankingData, strategy=None) -> EM3Ranker:
    """`compile_ranker` with `data`'s training vocabularies and item catalog."""
    return compile_ranker(config, data.vocabularies(), data.catalog, strategy)


def fit(model: EM3Ranker, data: RankingData, epochs=5, batch_size=256, seed=0, verbose=1,
        log_dir: Optional[str] = None, checkpoint_dir: Optional[str] = None,
        validate=True) -> keras.callbacks.History:
    """`model.fit` on the train split (shuffled with `seed`), validating on eval.

    Writes TensorBoard logs to `log_dir` and weight checkpoints (one per epoch) to
    `checkpoint_dir` when given.
    """
    callbacks = [RefreshContentCache()]
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    if checkpoint_dir:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoint_dir, "ckpt-{epoch:03d}"), save_weights_only=True))
    return model.fit(
        data.dataset("train", batch_size, shuffle=True, seed=seed), epochs=epochs,
        validation_data=data.dataset("eval", 1024) if validate else None,
        callbacks=callbacks, verbose=verbose)


def predict(model: EM3Ranker, data: RankingData, split: str, batch_size=1024) -> np.ndarray:
    return model.predict(data.dataset(split, batch_size, with_label=False), verbose=0)


def evaluate(model: EM3Ranker, data: RankingData, split="test") -> Dict[str, float]:
    """`ranking_report` of `split` (overall, cold items, warm items)."""
    part = data.splits[split]
    return ranking_report(part[F.LABEL], predict(model, data, split), part[F.USER_ID],
                          data.cold_mask(split))


def train_and_evaluate(config: EM3Config, data: RankingData, epochs=5, batch_size=256, seed=0,
                       verbose=1, **fit_kwargs):
    """Seeds everything, builds, fits and evaluates; returns `(model, report)`."""
    keras.utils.set_random_seed(seed)
    model = build_ranker(config, data)
    start = time.perf_counter()
    fit(model, data, epochs=epochs, batch_size=batch_size, seed=seed, verbose=verbose,
        **fit_kwargs)
    seconds = time.perf_counter() - start
    report = evaluate(model, data)
    report["train_seconds"] = round(seconds, 2)
    return model, report

