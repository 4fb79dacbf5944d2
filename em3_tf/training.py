"""Train and evaluate an `EM3Ranker` on a `RankingData`: used by the CLI, benchmarks and TFX.

The training protocol, the same for every variant:
  - Adam at `config.learning_rate`, constant or with linear warm-up and cosine decay over the
    planned steps (`config.lr_schedule`); the content encoder's weights can get their own
    learning rate (`config.content_lr_scale`, through `tfrs.experimental.optimizers.
    CompositeOptimizer`);
  - up to `epochs` epochs, early stopping on the eval split's AUC (`patience` epochs without
    improvement), the best epoch's weights restored. The test split is never looked at.

Resuming (`backup_dir`): `BackupAndRestore` writes the whole training state at the end of
every epoch: the model's weights, the optimizer's (its step count included, so a learning-rate
schedule continues where it was), the epoch, and the early stopping state (best AUC, its
epoch, the epochs without gain and a copy of the best weights). A run started again with the
same arguments and `backup_dir` continues after the last finished epoch; the backup is kept
until the caller removes it (`remove_backup`, after its export), so a run killed between
training and export resumes with nothing left to train and exports the same model.
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
from em3_tf.quantization.alignment import item_codes


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
                   total_steps: Optional[int] = None, train_split=None,
                   first_stage: Optional[EM3Ranker] = None) -> EM3Ranker:
    """A compiled `EM3Ranker`, created under `strategy`'s scope if given; `total_steps` is the
    planned number of training steps (for the learning-rate schedule). With semantic ids, the
    catalog's codes are computed here: the aligned ones from `train_split`'s interactions
    (`{item_id, label, history_item_ids, history_labels}` arrays), the `"em3"` ones from the
    trained `first_stage` model (`config.first_stage()`, see `train_and_evaluate`)."""
    codes = None
    if config.semantic_id_levels:
        codes = item_codes(catalog, config.semantic_id_levels, config.semantic_id_codebook,
                           config.semantic_id_source, train_split, content_model=first_stage)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = EM3Ranker(config, vocabularies, catalog, semantic_codes=codes)
        model.compile(optimizer=make_optimizer(config, model, total_steps))
    return model


def build_ranker(config: EM3Config, data: RankingData, strategy=None, epochs=None,
                 batch_size=256, first_stage: Optional[EM3Ranker] = None) -> EM3Ranker:
    """`compile_ranker` with `data`'s training vocabularies, item catalog and interactions
    (and the steps of `epochs` epochs of `batch_size` for the schedule)."""
    steps = (epochs * math.ceil(len(data.splits["train"][F.ITEM_ID]) / batch_size)
             if epochs else None)
    return compile_ranker(config, data.vocabularies(), data.catalog, strategy, steps,
                          data.splits["train"], first_stage)


class GlobalMetrics(keras.callbacks.Callback):
    """The epoch's metrics over every replica and worker, for the callbacks after it.

    With several replicas (MirroredStrategy, MultiWorkerMirroredStrategy), Keras sums what
    each replica's `train_step` / `test_step` returns: right for the ranker's losses (each
    replica's is divided by the global batch), wrong for its metrics, which are then the sum
    of per-replica AUCs and log-losses. Listed first, this callback replaces them, at each
    epoch end, with the metrics' results over all replicas (all-reduced), so that early
    stopping, History and TensorBoard see the true eval AUC. One replica: it does nothing.
    """

    def _active(self):
        return self.model.distribute_strategy.num_replicas_in_sync > 1

    def _results(self):
        out = {}
        for metric in self.model.metrics:
            value = metric.result()
            if isinstance(value, tf.Tensor) and value.shape.rank == 0:
                out[metric.name] = float(value)
        return out

    def on_epoch_begin(self, epoch, logs=None):
        self._train = None

    def on_test_begin(self, logs=None):  # fit's validation: the metrics still hold training's
        if self._active():
            self._train = self._results()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._active():
            return
        if self._train is None:  # no validation this epoch
            logs.update({k: v for k, v in self._results().items() if k in logs})
            return
        logs.update({k: v for k, v in self._train.items() if k in logs})
        logs.update({f"val_{k}": v for k, v in self._results().items() if f"val_{k}" in logs})


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' `EarlyStopping` on the eval AUC, best weights restored when training ends, whose
    state survives a resume.

    `state` (a `tf.Module`) holds the best AUC, its epoch, the epochs without gain, the epoch
    that stopped the training and, once a `BackupAndRestore` has attached it to its checkpoint,
    a copy of the best weights, so that they are backed up and restored with the model.
    """

    def __init__(self, patience: int):
        super().__init__(monitor="val_auc", mode="max", patience=patience,
                         restore_best_weights=True)
        self.state = tf.Module(name="early_stopping")
        with tf.init_scope():
            self.state.best = tf.Variable(-np.inf, dtype=tf.float64, trainable=False)
            self.state.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.state.wait = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.state.stopped_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.state.has_best_weights = tf.Variable(False, trainable=False)
        self._backed_up = False
        self._saved_weights = None  # the `best_weights` list last copied into `state`
        self._weights_to_load = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._backed_up = False
        self._saved_weights = None
        self._weights_to_load = False
        self.state.has_best_weights.assign(False)
        self._save_state()

    def attach(self):
        """Called by `BackupAndRestore` once `state` is in its checkpoint (and restored from it
        if there was a backup): continues from the restored state."""
        self._backed_up = True
        self.best = float(self.state.best.numpy())
        self.best_epoch = int(self.state.best_epoch.numpy())
        self.wait = int(self.state.wait.numpy())
        self.stopped_epoch = int(self.state.stopped_epoch.numpy())
        self._weights_to_load = bool(self.state.has_best_weights.numpy())

    def _shadow_weights(self):
        """The variables holding the best weights in `state`, created at the first epoch end
        (the model has all its weights then; a pending restore fills them as they are
        created)."""
        if not hasattr(self.state, "best_weights"):
            with tf.init_scope():
                self.state.best_weights = [tf.Variable(w, trainable=False)
                                           for w in self.model.get_weights()]
        return self.state.best_weights

    def _load_best_weights(self):
        """The restored best weights, at the first epoch end after a resume."""
        if self._weights_to_load:
            self.best_weights = [v.numpy() for v in self._shadow_weights()]
            self._saved_weights = self.best_weights
            self._weights_to_load = False

    def _save_state(self):
        self.state.best.assign(self.best)
        self.state.best_epoch.assign(self.best_epoch)
        self.state.wait.assign(self.wait)
        self.state.stopped_epoch.assign(self.stopped_epoch)
        if (self._backed_up and self.best_weights is not None
                and self.best_weights is not self._saved_weights):
            for variable, value in zip(self._shadow_weights(), self.best_weights):
                variable.assign(value)
            self._saved_weights = self.best_weights
            self.state.has_best_weights.assign(True)

    def on_epoch_end(self, epoch, logs=None):
        self._load_best_weights()
        super().on_epoch_end(epoch, logs)
        self._save_state()

    # A resumed fit that trains no epoch (the backup was taken when training had finished)
    # leaves `best_weights` None: the model then builds with the final, best, weights.


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, plus the `EarlyStopping` state and a final backup.

    At the end of every epoch the model, the optimizer (its step count included: a learning
    rate schedule goes on where it was), the epoch and `early_stopping.state` are written to
    `backup_dir`; a new `fit` with the same `backup_dir` restores them and continues after the
    last finished epoch. List it after `early_stopping`, so that each backup holds the state
    after that epoch's early stopping decision.

    When training ends, the final weights (the best epoch's, restored by early stopping) are
    backed up once more, marked as finished, and the backup is kept: a `fit` started again
    trains no further epoch and the model gets these weights as it builds. Remove the backup
    with `remove_backup` once the model is exported. Under a multi-worker strategy only the
    chief writes `backup_dir` (the others write and delete a temporary copy), and every worker
    restores from it, so it must be on storage they share.
    """

    def __init__(self, backup_dir: str, early_stopping: Optional[EarlyStopping] = None):
        super().__init__(backup_dir, delete_checkpoint=False)
        self.early_stopping = early_stopping
        self.resumed_after = None  # epochs finished before this run, when it resumed
        self._epochs_run = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)  # restores the model and epoch (deferred until built)
        state = self._training_state
        if self.early_stopping is not None:
            # both checkpoint managers save this one checkpoint object; restored on attach
            state.read_checkpoint_manager.checkpoint.early_stopping = self.early_stopping.state
            self.early_stopping.attach()
        self._epochs_run = 0
        done = int(state._ckpt_saved_epoch.numpy()) + 1
        self.resumed_after = done or None
        if done:
            step = _optimizer_step(self.model)
            print(f"Resuming from the backup in {self.backup_dir}: {done} epoch(s) done"
                  + (f", optimizer step {step}" if step else "")
                  + (" (training had finished)" if done >= self.params.get("epochs", 0) else ""),
                  flush=True)

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_run += 1
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        if self._epochs_run:  # else nothing changed (and an unbuilt model has nothing to save)
            last = self.params["epochs"] - 1  # a new fit trains no further epoch
            self._training_state._ckpt_saved_epoch.assign(last)
            self._backup(epoch=last)
        super().on_train_end(logs)


def _optimizer_step(model) -> Optional[int]:
    """The optimizer's step count, when it already exists (legacy optimizers create it late)."""
    optimizer = getattr(model, "optimizer", None)
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    if isinstance(optimizer, keras.optimizers.Optimizer):  # not the legacy ones
        return int(optimizer.iterations.numpy())
    return None


def remove_backup(backup_dir: Optional[str], strategy=None):
    """Deletes `backup_dir` (call it once the trained model is exported); under a multi-worker
    strategy only the chief does."""
    if not backup_dir or (strategy is not None and not strategy.extended.should_checkpoint):
        return
    if tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)


def callbacks(patience: Optional[int] = None, log_dir: Optional[str] = None,
              checkpoint_dir: Optional[str] = None, backup_dir: Optional[str] = None):
    """The training callbacks: `GlobalMetrics` first, early stopping on `val_auc` (if
    `patience`), TensorBoard logs, per-epoch weight checkpoints and a resumable backup (if
    their directories are given; the backup last, see `BackupAndRestore`). (`EM3Ranker.fit`
    adds the content cache refresh after them, so the restored weights are the ones
    cached.)"""
    out = [GlobalMetrics()]
    early = EarlyStopping(patience) if patience else None
    if early is not None:
        out.append(early)
    if log_dir:
        out.append(keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    if checkpoint_dir:
        out.append(keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoint_dir, "ckpt-{epoch:03d}"), save_weights_only=True))
    if backup_dir:
        out.append(BackupAndRestore(backup_dir, early))
    return out


def fit_with(model: EM3Ranker, train, callback_list, **fit_kwargs) -> keras.callbacks.History:
    """`model.fit(train, callbacks=callback_list, **fit_kwargs)`; the History also carries the
    `EarlyStopping` (`history.early_stopping`) and `BackupAndRestore` (`history.backup`) used,
    or None, for reports that span a resume (`history.history` only has this run's epochs).

    With a backup, the model is first built on one batch of `validation_data` (or `train`),
    so that a restored backup fills its weights at once, even when no epoch is left to train.
    """
    callback_list = list(callback_list)
    backup = next((c for c in callback_list if isinstance(c, BackupAndRestore)), None)
    if backup is not None:
        build_model(model, fit_kwargs.get("validation_data") or train)
    synced = [i for i, c in enumerate(callback_list) if isinstance(c, GlobalMetrics)]
    if (synced and model.distribute_strategy.num_replicas_in_sync > 1
            and fit_kwargs.get("verbose", 1) != 0
            and not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callback_list)):
        # Keras puts its progress bar first; after GlobalMetrics it prints the true metrics
        callback_list.insert(synced[0] + 1, keras.callbacks.ProgbarLogger(count_mode="steps"))
    history = model.fit(train, callbacks=callback_list, **fit_kwargs)
    history.early_stopping = next((c for c in callback_list if isinstance(c, EarlyStopping)),
                                  None)
    history.backup = backup
    return history


def build_model(model: EM3Ranker, dataset: tf.data.Dataset):
    """Creates `model`'s variables (under its strategy) by scoring the first batch of
    `dataset` (feature dicts; the label, if any, is ignored)."""
    batch = next(iter(dataset.take(1)))
    with model.distribute_strategy.scope():
        model(batch, training=False)


def fit(model: EM3Ranker, data: RankingData, epochs=5, batch_size=256, seed=0, verbose=1,
        patience: Optional[int] = 1, log_dir: Optional[str] = None,
        checkpoint_dir: Optional[str] = None,
        backup_dir: Optional[str] = None) -> keras.callbacks.History:
    """`model.fit` on the train split (shuffled with `seed`), validating on eval after every
    epoch, early stopping on eval AUC with `patience` (None: train all `epochs`); resumes from
    `backup_dir` when it holds a backup of the same training (see `BackupAndRestore`)."""
    return fit_with(
        model, data.dataset("train", batch_size, shuffle=True, seed=seed),
        callbacks(patience, log_dir, checkpoint_dir, backup_dir), epochs=epochs,
        validation_data=data.dataset("eval", 1024), verbose=verbose)


def fit_summary(history: keras.callbacks.History) -> Dict:
    """`epochs_trained` (in all, before a resume included), `best_epoch` (1-based) and its
    `eval_auc`, `resumed_after` (epochs done before this run resumed, or None), from a
    `fit_with` History."""
    early, backup = getattr(history, "early_stopping", None), getattr(history, "backup", None)
    val_auc = history.history.get("val_auc", [])
    resumed = backup.resumed_after if backup is not None else None
    epochs = history.epoch[-1] + 1 if history.epoch else (resumed or 0)
    if early is not None and np.isfinite(early.best):
        best_epoch, eval_auc = early.best_epoch + 1, float(early.best)
    elif val_auc:
        best_epoch = history.epoch[int(np.argmax(val_auc))] + 1
        eval_auc = float(max(val_auc))
    else:
        best_epoch = eval_auc = None
    return {"epochs_trained": epochs, "best_epoch": best_epoch, "eval_auc": eval_auc,
            "resumed_after": resumed}


def predict(model: EM3Ranker, data: RankingData, split: str, batch_size=1024) -> np.ndarray:
    return model.predict(data.dataset(split, batch_size, with_label=False), verbose=0)


def evaluate(model: EM3Ranker, data: RankingData, split="test") -> Dict[str, float]:
    """`ranking_report` of `split`: overall and per slice (cold/warm items, new/returning
    users)."""
    part = data.splits[split]
    return ranking_report(part[F.LABEL], predict(model, data, split), part[F.USER_ID],
                          data.slices(split))


def build_seeded_ranker(config: EM3Config, data: RankingData, epochs=5, batch_size=256, seed=0,
                        verbose=1, patience: Optional[int] = 1):
    """`(model, first_report)`: `build_ranker` after seeding everything with `seed`. A
    two-stage config (`config.two_stage`) first trains `config.first_stage()` like
    `train_and_evaluate` (no evaluation), whose codes the model gets, and `first_report` is
    that training's report (else None)."""
    first, first_report = None, None
    if config.two_stage:
        first, first_report = train_and_evaluate(config.first_stage(), data, epochs, batch_size,
                                                 seed, verbose, patience, split=None)
    keras.utils.set_random_seed(seed)
    model = build_ranker(config, data, epochs=epochs, batch_size=batch_size, first_stage=first)
    return model, first_report  # the first model is dropped: its codes are in `model`


def train_and_evaluate(config: EM3Config, data: RankingData, epochs=5, batch_size=256, seed=0,
                       verbose=1, patience: Optional[int] = 1, split: Optional[str] = "test",
                       **fit_kwargs):
    """Seeds everything, builds, fits (early stopping on eval) and evaluates `split` (None:
    no evaluation); returns `(model, report)` with the epochs trained, the best epoch and the
    optimizer's step count in the report. `fit_kwargs` go to `fit` (e.g. `backup_dir`:
    resumable; it then holds the second stage only).

    A two-stage config (`config.two_stage`: semantic ids of the model's own trained content)
    first trains `config.first_stage()` the same way; the report's `train_seconds` counts both
    stages and `first_stage` holds the first one's summary."""
    model, first_report = build_seeded_ranker(config, data, epochs, batch_size, seed, verbose,
                                              patience)
    start = time.perf_counter()
    history = fit(model, data, epochs=epochs, batch_size=batch_size, seed=seed, verbose=verbose,
                  patience=patience, **fit_kwargs)
    seconds = time.perf_counter() - start
    report = evaluate(model, data, split) if split else {}
    if first_report is not None:
        seconds += first_report["train_seconds"]
        report["first_stage"] = first_report
    report.update(train_seconds=round(seconds, 2), **fit_summary(history),
                  optimizer_steps=_optimizer_step(model))
    return model, report
