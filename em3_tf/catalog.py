"""The item catalog: content token features of every item, looked up by item id.

Content lives here, once per item, not in every training example. An item that never had an
interaction still has a catalog row, so the ranker can score it from its content: that is
EM3's answer to item cold start.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Dict

import numpy as np


def _gfile():
    """`tf.io.gfile` (imported on use: the catalog's arrays need no TensorFlow)."""
    import tensorflow as tf
    return tf.io.gfile


@dataclasses.dataclass
class ItemCatalog:
    """Token features of every catalog item, per modality.

    Attributes:
      item_ids: `[N]` unique item identifiers: int64, or str for a data set with string ids.
      tokens: `{modality: float [N, T_m, D_m]}` token features from frozen encoders.
      masks: `{modality: bool [N, T_m]}`; an all-false row means the modality is missing.
      metadata: optional per-item arrays (`[N, ...]`), e.g. a genre label for plots.
      encoding: how the token features were made (JSON-able: text encoder preset and length,
        attribute vocabulary, ...), so that items added later are encoded the same way.
    """

    item_ids: np.ndarray
    tokens: Dict[str, np.ndarray]
    masks: Dict[str, np.ndarray]
    metadata: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    encoding: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        ids = np.asarray(self.item_ids)
        self.item_ids = ids.astype(str) if ids.dtype.kind in "USO" else ids.astype(np.int64)
        if self.item_ids.ndim != 1:
            raise ValueError(f"`item_ids` must be 1-D, got shape {self.item_ids.shape}.")
        if len(np.unique(self.item_ids)) != len(self.item_ids):
            raise ValueError("`item_ids` must be unique.")
        if not self.tokens:
            raise ValueError("An ItemCatalog needs at least one modality.")
        if set(self.tokens) != set(self.masks):
            raise ValueError(f"`tokens` modalities {sorted(self.tokens)} differ from `masks` "
                             f"modalities {sorted(self.masks)}.")
        n = len(self.item_ids)
        for name in self.tokens:
            tokens, mask = np.asarray(self.tokens[name]), np.asarray(self.masks[name], bool)
            if tokens.ndim != 3 or tokens.shape[0] != n:
                raise ValueError(f"Modality '{name}' tokens must be [{n}, tokens, dim], got "
                                 f"{tokens.shape}.")
            if mask.shape != tokens.shape[:2]:
                raise ValueError(f"Modality '{name}' mask must be {tokens.shape[:2]}, got "
                                 f"{mask.shape}.")
            self.tokens[name], self.masks[name] = tokens, mask

    def __len__(self):
        return len(self.item_ids)

    @property
    def modality_dims(self) -> Dict[str, int]:
        return {name: int(t.shape[-1]) for name, t in self.tokens.items()}

    def save(self, path: str) -> None:
        """Writes `path` (a directory, local or a URI such as gs://): `catalog.npz` and
        `catalog.json`, each atomically."""
        gfile = _gfile()
        gfile.makedirs(path)
        arrays = {"item_ids": self.item_ids}
        for name in self.tokens:
            arrays[f"tokens/{name}"] = self.tokens[name]
            arrays[f"masks/{name}"] = self.masks[name]
        for name, value in self.metadata.items():
            arrays[f"metadata/{name}"] = np.asarray(value)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        info = json.dumps({"num_items": len(self), "modality_dims": self.modality_dims,
                           "tokens_per_modality": {n: int(t.shape[1])
                                                   for n, t in self.tokens.items()},
                           "metadata": sorted(self.metadata), "encoding": self.encoding},
                          indent=2).encode()
        for name, data in (("catalog.npz", buffer.getvalue()), ("catalog.json", info)):
            tmp = os.path.join(path, name + ".tmp")
            with gfile.GFile(tmp, "wb") as f:
                f.write(data)
            gfile.rename(tmp, os.path.join(path, name), overwrite=True)

    @classmethod
    def load(cls, path: str) -> "ItemCatalog":
        """The catalog saved at `path` (its directory or its `catalog.npz`; local or a URI)."""
        gfile = _gfile()
        file = os.path.join(path, "catalog.npz") if gfile.isdir(path) else path
        if not gfile.exists(file):
            raise FileNotFoundError(f"No item catalog at {file}.")
        with gfile.GFile(file, "rb") as f:
            buffer = io.BytesIO(f.read())
        with np.load(buffer, allow_pickle=False) as data:
            groups: Dict[str, Dict[str, np.ndarray]] = {"tokens": {}, "masks": {}, "metadata": {}}
            for key in data.files:
                if "/" in key:
                    group, name = key.split("/", 1)
                    groups[group][name] = data[key]
            arrays = (data["item_ids"], groups["tokens"], groups["masks"], groups["metadata"])
        info = os.path.join(os.path.dirname(file), "catalog.json")
        encoding = {}
        if gfile.exists(info):
            with gfile.GFile(info) as f:
                encoding = json.load(f).get("encoding", {})
        return cls(*arrays, encoding=encoding)

    def subset(self, item_ids: np.ndarray) -> "ItemCatalog":
        """The catalog restricted to `item_ids` (in that order); unknown ids raise."""
        index = {i: k for k, i in enumerate(self.item_ids.tolist())}
        wanted = np.asarray(item_ids).astype(self.item_ids.dtype).tolist()
        missing = [i for i in wanted if i not in index]
        if missing:
            raise KeyError(f"Item ids not in catalog: {missing[:10]}")
        rows = np.array([index[i] for i in wanted], dtype=np.int64)
        return ItemCatalog(self.item_ids[rows],
                           {n: t[rows] for n, t in self.tokens.items()},
                           {n: m[rows] for n, m in self.masks.items()},
                           {n: v[rows] for n, v in self.metadata.items()}, dict(self.encoding))

