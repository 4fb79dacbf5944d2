"""Imports TensorFlow with Keras 2 as `tf.keras`.

TensorFlow Recommenders, TensorFlow Transform and TFMA are Keras 2 code, so the ranker is
written against `tf_keras`. `TF_USE_LEGACY_KERAS=1` must be set before TensorFlow is first
imported; `em3_tf/__init__` (always imported first) sets it, and this module fails loudly if
TensorFlow was imported before without it.
Keras 3 (`import keras`) stays importable beside it for keras-hub's frozen encoders.
"""

import tensorflow as tf

if not tf.keras.__name__.startswith("tf_keras"):
    raise ImportError(
        "em3_tf needs tf.keras to be Keras 2 (tf_keras), but TensorFlow was imported with "
        f"{tf.keras.__name__}. Set TF_USE_LEGACY_KERAS=1 before importing tensorflow, "
        "or import em3_tf first."
    )

import tensorflow_recommenders as tfrs  # noqa: E402

keras = tf.keras



class float32_policy:
    """Context manager: layers created inside compute in float32 whatever the global policy.

    For TFRS tasks and losses, which take no `dtype` argument and must not run in float16.
    """

    def __enter__(self):
        self.previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")

    def __exit__(self, *exc):
        keras.mixed_precision.set_global_policy(self.previous)
        return False


__all__ = ["tf", "tfrs", "keras", "float32_policy"]
