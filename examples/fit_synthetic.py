"""Fit EM3 and the ID-only baseline on SYNTHETIC data with plain `model.fit` (a demo).

    .venv/bin/python examples/fit_synthetic.py

The data is synthetic (planted topics, see em3_tf/data/synthetic.py): it shows the API and
the cold-start mechanism, not real-world quality.
"""

import em3_tf  # noqa: F401  (makes tf.keras Keras 2 before TensorFlow is imported)
import tensorflow as tf

from em3_tf.config import EM3Config
from em3_tf.data.synthetic import make_synthetic
from em3_tf.evaluation import ranking_report
from em3_tf.models.ranker import EM3Ranker, RefreshContentCache

data = make_synthetic(max_history_len=20, seed=0)
test = data.splits["test"]
for preset in ("id_dcn", "em3"):
    tf.keras.utils.set_random_seed(0)
    config = EM3Config.preset(preset, max_history_len=20, learning_rate=3e-3)
    model = EM3Ranker(config, data.vocabularies(), data.catalog)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    model.fit(data.dataset("train", 256, shuffle=True), validation_data=data.dataset("eval"),
              epochs=10, callbacks=[RefreshContentCache()], verbose=2)
    scores = model.predict(data.dataset("test", with_label=False), verbose=0)
    report = ranking_report(test["label"], scores, test["user_id"], data.slices("test"))
    print(f"{preset}: test AUC {report['auc']:.3f}, cold-item AUC {report['cold_auc']:.3f}")
