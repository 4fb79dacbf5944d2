"""`RankingData`: split feature arrays plus the item catalog, as tf.data pipelines."""

import dataclasses
from typing import Dict, Tuple

import numpy as np

from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.catalog import ItemCatalog
from em3_tf.data.splits import IS_COLD, IS_NEW_USER


@dataclasses.dataclass
class RankingData:
    """Examples of one data source, split, with the item catalog they refer to.

    Attributes:
      name: data source name (e.g. "synthetic", "ml-100k").
      splits: `{"train"|"eval"|"test": {feature: array}}` (see `em3_tf.features`), with
        `is_cold_item`, `is_new_user` and `timestamp` beside the model features.
      catalog: the `ItemCatalog` of every item, including items with no interactions.
      context_features: names of the extra categorical features.
      protocol: the split protocol ("temporal" or "item_cold").
    """

    name: str
    splits: Dict[str, Dict[str, np.ndarray]]
    catalog: ItemCatalog
    context_features: Tuple[str, ...] = ()
    protocol: str = "temporal"

    @property
    def string_ids(self) -> bool:
        """Whether the ids are strings (e.g. "SKU-00017") rather than integers."""
        return F.is_string(self.catalog.item_ids)

    def vocabularies(self) -> Dict[str, np.ndarray]:
        """Known ids per ID feature: the values seen in the training split."""
        train = self.splits["train"]
        return {name: np.unique(train[name])
                for name in F.scalar_features(self.context_features)}

    def model_features(self, split: str) -> Dict[str, np.ndarray]:
        names = F.raw_features(self.context_features) + (F.LABEL,)
        return {name: self.splits[split][name] for name in names}

    def dataset(self, split: str, batch_size: int = 256, shuffle: bool = False, seed: int = 0,
                with_label: bool = True) -> tf.data.Dataset:
        """A batched `tf.data.Dataset` of feature dicts for `model.fit` / `model.predict`.

        Shuffles and batches row indices, then gathers each batch's rows at once: the same
        batches as shuffling and batching the examples one by one (`shuffle` permutes
        elements the same way whatever they hold), at a fraction of the input cost."""
        features = self.model_features(split)
        if not with_label:
            features.pop(F.LABEL)
        columns = {name: tf.constant(value) for name, value in features.items()}
        ds = tf.data.Dataset.range(len(features[F.ITEM_ID]))
        if shuffle:
            ds = ds.shuffle(len(features[F.ITEM_ID]), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).map(
            lambda rows: {name: tf.gather(value, rows) for name, value in columns.items()})
        return ds.prefetch(tf.data.AUTOTUNE)

    def slices(self, split: str) -> Dict[str, np.ndarray]:
        """Boolean row masks of the reported slices: cold / warm items, new / returning users."""
        part = self.splits[split]
        cold, new = np.asarray(part[IS_COLD], bool), np.asarray(part[IS_NEW_USER], bool)
        return {"cold": cold, "warm": ~cold, "new_user": new, "returning_user": ~new}
