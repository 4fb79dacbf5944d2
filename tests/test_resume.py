"""A killed training resumes from its last backup instead of starting over: the CLI killed
with SIGKILL mid-training, and `fit` interrupted, with the early stopping state, best weights
and optimizer step restored."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from em3_tf import features as F
from em3_tf._tf import keras, tf
from em3_tf.config import EM3Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 6
BATCH = 256
CLI = ["--data", "synthetic", "--epochs", str(EPOCHS), "--batch-size", str(BATCH),
       "--config", json.dumps({"lr_schedule": "cosine"})]


def _run_cli(out, log_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "em3_tf.train", *CLI, "--out", out],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log


def _kill_after_first_backup(process, log, backed_up, log_path, timeout_s=150):
    """SIGKILLs `process` as soon as `backed_up()` (its first epoch's backup exists)."""
    try:
        deadline = time.monotonic() + timeout_s
        while not backed_up():
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no backup after {timeout_s} s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def _epochs_started(log):
    return [int(n) for n in re.findall(rf"^Epoch (\d+)/{EPOCHS}$", log, re.M)]


def _finish(process, log, log_path) -> str:
    """Waits (at most 240 s) for the resumed run, which must succeed; returns its log."""
    try:
        process.wait(240)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    text = log_path.read_text()
    assert process.returncode == 0, text[-3000:]
    return text


def test_a_killed_cli_training_resumes_after_its_last_finished_epoch(tmp_path):
    out = str(tmp_path / "run")
    backup_state = os.path.join(out, "backup", "chief", "checkpoint")
    first, log = _run_cli(out, tmp_path / "first.log")
    _kill_after_first_backup(first, log, lambda: os.path.exists(backup_state),
                             tmp_path / "first.log")
    first_log = (tmp_path / "first.log").read_text()
    assert first.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "report.json"))  # it died mid-training
    assert _epochs_started(first_log)[0] == 1

    second, log = _run_cli(out, tmp_path / "second.log")
    second_log = _finish(second, log, tmp_path / "second.log")
    resumed = re.search(r"Resuming from the backup in .*: (\d+) epoch\(s\) done, optimizer step "
                        r"(\d+)", second_log)
    assert resumed, second_log[-3000:]
    done, step = int(resumed.group(1)), int(resumed.group(2))
    train_rows = int(re.search(r"train=(\d+)", second_log).group(1))
    steps_per_epoch = math.ceil(train_rows / BATCH)
    assert 1 <= done < EPOCHS and step == done * steps_per_epoch
    epochs = _epochs_started(second_log)
    assert epochs and epochs[0] == done + 1, epochs  # not from epoch 1
    assert epochs == list(range(done + 1, epochs[-1] + 1))

    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["resumed_after"] == done
    assert report["epochs_trained"] == epochs[-1]
    # the learning-rate schedule's step count went on from the backup's
    assert report["optimizer_steps"] == report["epochs_trained"] * steps_per_epoch
    assert 1 <= report["best_epoch"] <= report["epochs_trained"]
    assert not os.path.exists(os.path.join(out, "backup"))  # removed once complete

    from em3_tf.data.synthetic import make_synthetic
    data = make_synthetic(max_history_len=EM3Config.preset("em3").max_history_len, seed=0)
    rows = {k: v[:64] for k, v in data.model_features("test").items() if k != F.LABEL}
    scores = tf.saved_model.load(os.path.join(out, "saved_model")).signatures[
        "serving_default"](examples=tf.constant(F.to_examples(rows)))["scores"].numpy()
    assert scores.shape == (64,) and np.all((scores > 0) & (scores < 1))
    assert scores.std() > 1e-3  # a trained model, not a constant


class _Interrupt(Exception):
    pass


class _Record(keras.callbacks.Callback):
    """Records each epoch's eval AUC and weights; raises `_Interrupt` at `stop_at`'s start."""

    def __init__(self, stop_at=None):
        super().__init__()
        self.stop_at, self.auc, self.weights, self.epochs = stop_at, {}, {}, []
        self.steps_at_start = None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.stop_at:
            raise _Interrupt()
        self.epochs.append(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.steps_at_start is None:
            self.steps_at_start = int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        self.auc[epoch] = logs["val_auc"]
        self.weights[epoch] = self.model.get_weights()


def test_early_stopping_state_best_weights_and_a_finished_training_survive_a_resume(
        small_data, tmp_path):
    from em3_tf.training import EarlyStopping, build_ranker, callbacks, fit_with

    config = EM3Config.preset("id_dcn", max_history_len=10, learning_rate=0.02,
                              lr_schedule="cosine")
    backup = str(tmp_path / "backup")
    steps = math.ceil(len(small_data.splits["train"][F.ITEM_ID]) / 64)

    def run(record, patience=3):
        keras.utils.set_random_seed(0)
        model = build_ranker(config, small_data, epochs=4, batch_size=64)
        used = callbacks(patience, backup_dir=backup)
        history = fit_with(model, small_data.dataset("train", 64, shuffle=True, seed=0),
                           used + [record], epochs=4,
                           validation_data=small_data.dataset("eval", 1024), verbose=0)
        return model, history, next(c for c in used if isinstance(c, EarlyStopping))

    first = _Record(stop_at=2)
    with pytest.raises(_Interrupt):
        run(first)
    assert sorted(first.auc) == [0, 1]

    second = _Record()
    model, history, early = run(second)
    assert second.epochs == [2, 3] and history.backup.resumed_after == 2
    assert second.steps_at_start == 2 * steps  # the schedule goes on from step 2 epochs in
    auc = {**first.auc, **second.auc}
    weights = {**first.weights, **second.weights}
    best = max(auc, key=lambda e: (auc[e], -e))  # the first epoch with the best AUC
    assert early.best_epoch == best and early.best == pytest.approx(auc[best], abs=1e-6)
    for got, expected in zip(model.get_weights(), weights[best]):  # best weights restored,
        np.testing.assert_array_equal(got, expected)  # from the backup if before the kill
    rows = {k: v[:32] for k, v in small_data.model_features("test").items()}
    expected_scores = model(rows).numpy()

    # killed after training, before its export: a new run trains nothing and gets the
    # final (best) weights from the kept backup
    third = _Record()
    model, history, early = run(third)
    assert third.epochs == [] and history.backup.resumed_after == 4
    np.testing.assert_allclose(model(rows).numpy(), expected_scores, atol=1e-6)
    assert early.best_epoch == best


def test_a_killed_tfx_trainer_resumes_in_its_next_execution(tmp_path):
    """The Trainer executor (run_fn, train steps counted at run time) killed after its first
    epoch; the re-run, as TFX runs it, gets new `model` and `model_run` directories but the
    same inputs, so it finds the backup under the component's directory and resumes."""
    import glob

    from em3_tf.data.synthetic import make_synthetic
    from trainer_inputs import start_trainer, transform

    data = make_synthetic(num_users=60, num_items=90, max_history_len=10, seed=3)
    inputs = transform(str(tmp_path), data)
    trainer = tmp_path / "root" / "EM3Trainer"
    custom = {"preset": "em3", "em3_overrides": {"max_history_len": 10, "lr_schedule": "cosine"},
              "epochs": 4, "patience": 3, "batch_size": BATCH, "seed": 0,
              "model_name": "em3-resume"}

    def start(execution):
        spec = {**inputs, "model": str(trainer / "model" / execution),
                "model_run": str(trainer / "model_run" / execution), "custom_config": custom}
        return start_trainer(spec, tmp_path / f"spec-{execution}.json",
                             tmp_path / f"trainer-{execution}.log", TF_CONFIG="")

    first, log = start("4")
    _kill_after_first_backup(
        first, log, lambda: glob.glob(str(trainer / "backup" / "*" / "chief" / "checkpoint")),
        tmp_path / "trainer-4.log")
    assert not os.path.exists(trainer / "model" / "4" / "Format-Serving")

    second, log = start("5")
    second_log = _finish(second, log, tmp_path / "trainer-5.log")
    steps = math.ceil(len(data.splits["train"][F.ITEM_ID]) / BATCH)
    assert f"at most 4 epoch(s) of {steps} steps" in second_log
    resumed = re.search(r"Resuming from the backup in (\S+): (\d+) epoch\(s\) done, optimizer "
                        r"step (\d+)", second_log)
    assert resumed, second_log[-3000:]
    backup, done = resumed.group(1), int(resumed.group(2))
    assert os.path.dirname(backup) == str(trainer / "backup")
    assert 1 <= done < 4 and int(resumed.group(3)) == done * steps
    epochs = [int(n) for n in re.findall(r"^Epoch (\d+)/4$", second_log, re.M)]
    assert epochs and epochs[0] == done + 1, epochs
    assert "export check: max |in-memory - served|" in second_log
    assert not os.path.exists(backup)  # removed after the export

    test = {k: v[:32] for k, v in data.model_features("test").items() if k != F.LABEL}
    scores = tf.saved_model.load(str(trainer / "model" / "5" / "Format-Serving")).signatures[
        "serving_default"](examples=tf.constant(F.to_examples(test)))["scores"].numpy()
    assert scores.shape == (32,) and np.all((scores > 0) & (scores < 1))
