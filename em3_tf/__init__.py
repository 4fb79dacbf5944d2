"""em3-tf: EM3 multimodal ranking (Fusion-Q-Former, LoRA, CIC) for TFRS, TFX and TF Serving.

Importing `em3_tf` sets `TF_USE_LEGACY_KERAS=1`, so that `tf.keras` is Keras 2 (`tf_keras`),
which TFRS, TF Transform and TFMA need; import it before TensorFlow. It does not import
TensorFlow itself: `em3_tf.interface` and `em3_tf.protos` (what clients use) stay light.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
