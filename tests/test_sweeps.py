"""`benchmarks.bench_quality`'s one-knob sweeps: what keeps their trials, and what reuses them."""

import json

from benchmarks import bench_quality
from em3_tf.config import EM3Config


def _args(tmp_path, knob):
    return bench_quality.parse_args(["--out", str(tmp_path), "--sweep", knob])


def test_a_later_sweeps_adoption_keeps_an_earlier_sweeps_trials(tmp_path):
    """The ID-dropout sweep's key ignores modality dropout (swept after it), but not a knob
    outside the sweeps."""
    assert list(bench_quality.SWEEPS)[:2] == ["id_dropout", "modality_dropout"]
    args, base = _args(tmp_path, "id_dropout"), EM3Config.preset("em3", id_dropout=0.5)
    key = bench_quality._trial_key(args, base, "id_dropout")
    assert bench_quality._trial_key(args, base.replace(modality_dropout=0.3), "id_dropout") == key
    assert bench_quality._trial_key(args, base.replace(id_dropout=0.3), "id_dropout") == key
    assert bench_quality._trial_key(args, base.replace(learning_rate=3e-3), "id_dropout") != key
    modality = bench_quality._trial_key(args, base, "modality_dropout")
    assert bench_quality._trial_key(args, base.replace(id_dropout=0.3),
                                    "modality_dropout") != modality


def test_only_the_exact_same_trial_is_reused_across_sweeps(tmp_path):
    """The modality sweep reuses the ID-dropout sweep's trial of the same config, and nothing
    for another modality dropout, another ID dropout or other epochs."""
    base = EM3Config.preset("em3", id_dropout=0.5, modality_dropout=0.1)
    earlier = _args(tmp_path, "id_dropout")
    (tmp_path / "sweep_id_dropout.json").write_text(json.dumps({
        "name": "id_dropout",
        "trial_key": {"em3": bench_quality._trial_key(earlier, base, "id_dropout")},
        "later": {"em3": {"modality_dropout": 0.1}},
        "best_eval_auc": {"em3": {"0.3": 0.71, "0.5": 0.72}}}))
    args = _args(tmp_path, "modality_dropout")
    assert bench_quality._swept_trial(args, "em3", base) == 0.72
    assert bench_quality._swept_trial(args, "em3", base.replace(id_dropout=0.3)) == 0.71
    assert bench_quality._swept_trial(args, "em3", base.replace(modality_dropout=0.3)) is None
    assert bench_quality._swept_trial(args, "em3", base.replace(id_dropout=0.15)) is None
    assert bench_quality._swept_trial(args, "frozen_content", base) is None
    args.epochs += 1
    assert bench_quality._swept_trial(args, "em3", base) is None


def test_a_kept_sweeps_new_trials_run_as_its_old_ones_did(tmp_path, monkeypatch):
    """Trials are stubbed (score: 0.7 + id_dropout / 10). After modality dropout is adopted,
    a new ID-dropout value runs with the modality dropout of the sweep's earlier trials, and
    those are not re-run; a change outside the sweeps starts the sweep afresh."""
    from types import SimpleNamespace

    from em3_tf import tuning
    calls = []

    def fake_trial(config, data, epochs, batch_size, seed=0, verbose=0):
        calls.append((config.id_dropout, config.modality_dropout))
        return SimpleNamespace(history={"val_auc": [0.7 + config.id_dropout / 10]})

    monkeypatch.setattr(tuning, "train_trial", fake_trial)
    recorded = tmp_path / "hp"

    def record(**values):
        hp = tuning.hyperparameters(EM3Config.preset("em3"))
        hp.values.update(values)
        tuning.write_hyperparameters(hp, str(recorded / "em3"))

    def sweep(*values):
        bench_quality.sweep(bench_quality.parse_args(
            ["--out", str(tmp_path), "--hyperparameters-dir", str(recorded), "--presets", "em3",
             "--sweep", "id_dropout", "--sweep-values", *values, "--adopt"]),
            SimpleNamespace(context_features=()))

    record(id_dropout=0.3, modality_dropout=0.1)
    sweep("0.5")
    assert calls == [(0.3, 0.1), (0.5, 0.1)]
    assert tuning.read_hyperparameters(str(recorded / "em3"))["id_dropout"] == 0.5  # adopted
    record(id_dropout=0.5, modality_dropout=0.3)  # as a later modality sweep would
    sweep("0.5", "0.15")
    assert calls[2:] == [(0.15, 0.1)]
    record(id_dropout=0.5, modality_dropout=0.3, learning_rate=3e-3)
    sweep("0.5")
    assert calls[3:] == [(0.5, 0.3)]
