"""em3-tf: EM3 multimodal ranking (Fusion-Q-Former, LoRA, CIC) for TFRS, TFX and TF Serving.

Importing `em3_tf` makes `tf.keras` Keras 2 (`tf_keras`), which TFRS, TF Transform and TFMA
need; import it before TensorFlow.
"""

from em3_tf import _tf  # noqa: F401

__version__ = "0.1.0"
