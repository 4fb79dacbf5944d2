"""The EM3 TFX pipeline: definition, configuration, components and runners.

TFRS, TF Transform and TFMA need Keras 2 as `tf.keras`; the variable must be set before
TensorFlow is first imported, which importing `tfx` does.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
