"""TFX Tuner user code: `tuner_fn` searches EM3's hyper-parameters with KerasTuner.

Used by `pipelines.components.EM3Tuner` (TFX's Tuner with the item catalog as an extra
input) when the pipeline runs with `--tune`. Each trial trains exactly as `run_fn` does
(`TrainingSetup.fit`: same data, schedule and early stopping on the eval split) with the
trial's values of `em3_tf.tuning.SEARCH_SPACE`; the Tuner writes the best values as its
`best_hyperparameters` artifact, which the Trainer reads (`fn_args.hyperparameters`).

`fn_args.custom_config` is the Trainer's (see `em3_tf.tfx.trainer`), plus `max_trials`.
"""

from tfx.components.tuner.component import TunerFnResult

from em3_tf.tfx.trainer import TrainingSetup
from em3_tf.tuning import EM3RandomSearch


def tuner_fn(fn_args) -> TunerFnResult:
    custom = dict(fn_args.custom_config or {})
    setup = TrainingSetup(fn_args, custom)

    def train_fn(config):
        return setup.fit(config, verbose=0)[1]

    tuner = EM3RandomSearch(setup.config, train_fn, max_trials=int(custom.get("max_trials", 6)),
                            seed=setup.seed, directory=fn_args.working_dir,
                            project_name="em3_tuning")
    return TunerFnResult(tuner=tuner, fit_kwargs={})
