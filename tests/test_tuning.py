"""KerasTuner search (`em3_tf.tuning`): what the benchmarks and TFX's Tuner run."""

import json

from em3_tf.config import EM3Config
from em3_tf.tuning import (SEARCH_SPACE, hyperparameters, read_hyperparameters, searched, tune,
                           values_of, write_hyperparameters)


def test_each_variant_searches_only_the_knobs_it_has():
    assert set(searched(EM3Config.preset("em3"))) == set(SEARCH_SPACE)
    assert "cic_weight" not in searched(EM3Config.preset("em3_no_cic"))
    ids = searched(EM3Config.preset("id_din"))
    assert not {"cic_weight", "content_lr_scale", "modality_dropout"} & set(ids)
    hp = hyperparameters(EM3Config.preset("id_din"))
    assert set(hp.values) == set(ids)


def test_search_records_the_best_trial_in_tfx_format(small_data, tmp_path):
    """Two trials on SYNTHETIC data: the best values come from the search space, are written in
    TFX's best_hyperparameters.txt format and read back as the same values."""
    base = EM3Config.preset("id_din", max_history_len=10)
    best = tune(base, small_data, max_trials=2, epochs=1, batch_size=128,
                directory=str(tmp_path / "search"), project_name="t")
    for name, value in best.values.items():
        assert value in SEARCH_SPACE[name], name
    path = write_hyperparameters(best, str(tmp_path / "recorded"))
    with open(path) as f:
        assert values_of(json.load(f)) == best.values
    assert read_hyperparameters(str(tmp_path / "recorded")) == best.values
    assert read_hyperparameters(str(tmp_path / "nothing-here")) == {}
    config = base.replace(**best.values)  # the values are valid EM3Config fields
    assert config.learning_rate == best.values["learning_rate"]
