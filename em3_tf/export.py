"""SavedModel export of an `EM3Ranker` with serving signatures.

Signatures:
  - `serving_default`: `examples` (string `[B]`, serialized tf.Example with the raw features
    of `em3_tf.features`) -> `scores` (float `[B]`, click probability). This is what
    TensorFlow Serving's Predict API is called with.
  - `predict_features`: the raw feature tensors (`user_id [B]`, `item_id [B]`,
    `history_item_ids [B, L]` padded with -1, context features `[B]`) -> `scores`.

The item catalog's token features are model variables, so an item that never had an
interaction is scored from its content by the exported model alone.
"""

import json
import os

from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.config import EM3Config

CONFIG_FILE = "em3_config.json"


def serving_signatures(model):
    config: EM3Config = model.config
    names = F.scalar_features(config.context_features)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        parsed = F.parse_examples(examples, config.context_features, config.max_history_len)
        return {"scores": model(parsed, training=False)}

    specs = [tf.TensorSpec([None], tf.int64, name=n) for n in names]
    specs.append(tf.TensorSpec([None, None], tf.int64, name=F.HISTORY))

    @tf.function(input_signature=specs)
    def serve_features(*tensors):
        return {"scores": model(dict(zip(names + (F.HISTORY,), tensors)), training=False)}

    return {"serving_default": serve_examples, "predict_features": serve_features}


def export_saved_model(model, export_dir: str) -> str:
    """Writes a SavedModel to `export_dir` (must not exist) and returns it.

    It is written to a temporary sibling directory first and renamed into place, so a reader
    never sees a half-written export.
    """
    if tf.io.gfile.exists(export_dir):
        raise FileExistsError(f"Export directory {export_dir} already exists.")
    tmp = export_dir.rstrip("/") + ".tmp-export"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(model, tmp, signatures=serving_signatures(model))
    extra = os.path.join(tmp, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, CONFIG_FILE), "w") as f:
        f.write(json.dumps(model.config.get_config(), indent=2, sort_keys=True))
    tf.io.gfile.rename(tmp, export_dir)
    return export_dir


def load_config(export_dir: str) -> EM3Config:
    with tf.io.gfile.GFile(os.path.join(export_dir, "assets.extra", CONFIG_FILE)) as f:
        return EM3Config.from_config(json.load(f))
