"""Shared fixtures. Every test seeds its own randomness; tolerances are stated where used."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from em3_tf._tf import tf  # noqa: E402,F401


@pytest.fixture(scope="session")
def small_data():
    """SYNTHETIC data, small enough for one-step checks."""
    from em3_tf.data.synthetic import make_synthetic
    return make_synthetic(num_users=60, num_items=90, max_history_len=10, seed=3)


@pytest.fixture(scope="session")
def cold_start_data():
    """SYNTHETIC item-cold data used for the cold-start quality test."""
    from em3_tf.data.synthetic import make_synthetic
    return make_synthetic(max_history_len=20, seed=0)


def first_rows(data, split, n):
    return {k: v[:n] for k, v in data.model_features(split).items()}


@pytest.fixture
def rng():
    return np.random.default_rng(0)
