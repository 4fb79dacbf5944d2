"""Hyper-parameter search with KerasTuner: one search space and one tuner for every variant.

The search space (`SEARCH_SPACE`) covers the training protocol's main knobs; a variant only
searches the knobs it has (no `cic_weight` without CIC, no `content_lr_scale` or
`modality_dropout` without a content encoder). Every variant gets the same budget:
`max_trials` random trials, each trained for at most `epochs` epochs with early stopping,
scored by its best eval AUC. The test split is never used.

`EM3RandomSearch` is a `keras_tuner.RandomSearch` whose `run_trial` trains through a function given
to it, so the same tuner serves TFX's `Tuner` component (`em3_tf.tfx.tuner.tuner_fn`, data
from Transform) and the benchmarks (`tune`, data from a `RankingData`).
"""

import json
import os
from typing import Callable, Dict, Optional

import keras_tuner

from em3_tf.config import EM3Config

OBJECTIVE = "val_auc"
HYPERPARAMETERS_FILE = "best_hyperparameters.txt"  # the TFX Tuner's file name and format
SEARCH_SPACE: Dict[str, tuple] = {
    "learning_rate": (3e-4, 1e-3, 3e-3),
    "dropout": (0.0, 0.1, 0.3),
    "id_dropout": (0.0, 0.05, 0.15, 0.3, 0.5),
    "cic_weight": (0.03, 0.1, 0.3),
    "content_lr_scale": (0.1, 0.3, 1.0),
    "modality_dropout": (0.0, 0.1, 0.3, 0.5),
}


def searched(config: EM3Config) -> Dict[str, tuple]:
    """The part of `SEARCH_SPACE` that `config`'s variant has."""
    return {name: values for name, values in SEARCH_SPACE.items()
            if not (name == "cic_weight" and config.cic_weight == 0)
            and not (name in ("content_lr_scale", "modality_dropout")
                     and not config.uses_content)}


def hyperparameters(config: EM3Config) -> keras_tuner.HyperParameters:
    """A `HyperParameters` declaring `searched(config)` as choices."""
    hp = keras_tuner.HyperParameters()
    for name, values in searched(config).items():
        hp.Choice(name, list(values))
    return hp


class EM3RandomSearch(keras_tuner.RandomSearch):
    """Random search over `hyperparameters(base_config)`.

    Args:
      base_config: the variant's `EM3Config`; each trial overrides the searched fields.
      train_fn: `train_fn(config) -> keras History` with `val_auc` per epoch (build, compile
        and fit on train, validating on eval).
      max_trials, seed, directory, project_name: as `keras_tuner.RandomSearch`.
    """

    def __init__(self, base_config: EM3Config, train_fn: Callable, max_trials=6, seed=0,
                 directory=None, project_name="em3", overwrite=False):
        self.base_config, self.train_fn = base_config, train_fn
        super().__init__(objective=keras_tuner.Objective(OBJECTIVE, "max"),
                         hyperparameters=hyperparameters(base_config), max_trials=max_trials,
                         seed=seed, directory=directory, project_name=project_name,
                         overwrite=overwrite)

    def run_trial(self, trial, *args, **kwargs):
        config = self.base_config.replace(**trial.hyperparameters.values)
        history = self.train_fn(config)
        return {OBJECTIVE: max(history.history[OBJECTIVE])}


def train_trial(config: EM3Config, data, epochs=4, batch_size=256, seed=0, verbose=0):
    """One tuning trial of `config` on `data` (a `RankingData`): build seeded, fit with early
    stopping on the eval split; returns the Keras History (`val_auc` per epoch). A two-stage
    config trains its first stage with the trial's values."""
    from em3_tf.training import build_seeded_ranker, fit
    model, _ = build_seeded_ranker(config, data, epochs, batch_size, seed, verbose)
    return fit(model, data, epochs=epochs, batch_size=batch_size, seed=seed, verbose=verbose)


def tune(base_config: EM3Config, data, max_trials=6, epochs=4, batch_size=256, seed=0,
         directory=None, project_name="em3", verbose=0) -> keras_tuner.HyperParameters:
    """Searches `base_config`'s variant on `data` (a `RankingData`; eval split only) and
    returns the best trial's hyper-parameters."""
    def train_fn(config):
        return train_trial(config, data, epochs, batch_size, seed, verbose)

    tuner = EM3RandomSearch(base_config, train_fn, max_trials, seed, directory, project_name)
    tuner.search(verbose=verbose)
    return tuner.get_best_hyperparameters(1)[0]


def values_of(config: Optional[Dict]) -> Dict:
    """The values of a `HyperParameters.get_config()` dict (what TFX hands `run_fn` as
    `fn_args.hyperparameters`); `{}` for None."""
    return dict(keras_tuner.HyperParameters.from_config(config).values) if config else {}


def write_hyperparameters(hp: keras_tuner.HyperParameters, directory: str) -> str:
    """Writes `directory/best_hyperparameters.txt` as TFX's Tuner does (importable as a
    `HyperParameters` artifact); returns the file."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, HYPERPARAMETERS_FILE)
    with open(path, "w") as f:
        json.dump(hp.get_config(), f, indent=1, sort_keys=True)
    return path


def read_hyperparameters(directory: str) -> Dict:
    """The values recorded by `write_hyperparameters` in `directory` (`{}` if none)."""
    path = os.path.join(directory, HYPERPARAMETERS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return values_of(json.load(f))
