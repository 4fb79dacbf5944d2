"""Item representations to quantize, aligned with the ranking task (QARM's first step).

Three sources, all computed from the catalog's content alone, so that a cold item gets codes:

- `"content"`: the frozen content features: each modality's tokens mean-pooled and
  L2-normalised, concatenated.
- `"aligned"`: those features through a small MLP trained contrastively (in-batch InfoNCE)
  on co-engagement pairs from the training interactions: an item a user liked and the items
  that user liked just before it (QARM's item alignment). Items engaged together end up close.
- `"em3"`: the content embeddings of a trained EM3 (`content_model`: the same ranker trained
  without codes first, `EM3Config.first_stage`), i.e. the Fusion-Q-Former aligned with the
  ranking task by the ranking loss itself, L2-normalised.

`item_codes(catalog, ...)` then fits RQ-KMeans on the chosen representation and returns the
codes of every catalog item.
"""

from typing import Optional

import numpy as np

from em3_tf import features as F
from em3_tf._tf import keras, tf
from em3_tf.catalog import ItemCatalog
from em3_tf.config import SOURCES
from em3_tf.quantization.rq import ResidualQuantizer


def content_features(catalog: ItemCatalog) -> np.ndarray:
    """`[N, sum of modality dims]`: per modality the masked mean of its tokens, L2-normalised
    (an item missing the modality has zeros there)."""
    parts = []
    for name in sorted(catalog.tokens):
        mask = catalog.masks[name][..., None].astype(np.float32)
        pooled = (catalog.tokens[name] * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
        parts.append(_l2_normalised(pooled))
    return np.concatenate(parts, axis=1).astype(np.float32)


def _l2_normalised(x: np.ndarray) -> np.ndarray:
    """`x [N, D]` with unit rows, in float32 (a zero row stays zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def co_engagement_pairs(split, max_back: int = 3) -> np.ndarray:
    """`[P, 2]` item-id pairs: each positive row's item with up to `max_back` of the user's
    most recent earlier positive items (from the row's feedback-aware history)."""
    positive = np.asarray(split[F.LABEL]) > 0
    items = np.asarray(split[F.ITEM_ID])[positive]
    history = np.asarray(split[F.HISTORY])[positive, :max_back * 3]
    liked = np.asarray(split[F.HISTORY_LABELS])[positive, :max_back * 3] > 0
    pairs = [(item, other) for item, row, keep in zip(items, history, liked)
             for other in row[keep][:max_back]]
    return np.array(pairs, dtype=items.dtype).reshape(-1, 2)


def aligned_embeddings(features: np.ndarray, rows: np.ndarray, dim: int = 32, steps: int = 300,
                       batch_size: int = 256, temperature: float = 0.1, seed: int = 0):
    """`[N, dim]` embeddings of `features` `[N, F]` from an MLP trained with symmetric
    InfoNCE on `rows` `[P, 2]` (catalog row pairs engaged together)."""
    if len(rows) == 0:
        raise ValueError("No co-engagement pairs to align items on (no positive row with an "
                         "earlier positive item).")
    init = keras.initializers.GlorotUniform  # seeded here: the global seeds stay untouched
    encoder = keras.Sequential([
        keras.layers.Dense(2 * dim, activation="relu", kernel_initializer=init(seed)),
        keras.layers.Dense(dim, kernel_initializer=init(seed + 1))])
    optimizer = keras.optimizers.Adam(1e-3)
    table = tf.constant(features)
    rng = np.random.default_rng(seed)

    def embed(index):
        return tf.math.l2_normalize(encoder(tf.gather(table, index)), axis=-1)

    for _ in range(steps):
        batch = rows[rng.integers(len(rows), size=min(batch_size, len(rows)))]
        with tf.GradientTape() as tape:
            a, b = embed(batch[:, 0]), embed(batch[:, 1])
            logits = tf.matmul(a, b, transpose_b=True) / temperature
            same = tf.cast(tf.equal(batch[:, :1], batch[None, :, 1]), tf.float32)
            logits -= 1e9 * (same - tf.eye(len(batch)))  # other copies of the pair's item
            labels = tf.range(len(batch))
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
                + keras.losses.sparse_categorical_crossentropy(labels, tf.transpose(logits),
                                                               from_logits=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, encoder.trainable_variables),
                                      encoder.trainable_variables))
    return embed(np.arange(len(features))).numpy()


def trained_content_embeddings(catalog: ItemCatalog, content_model) -> np.ndarray:
    """`[N, D]` L2-normalised target-branch content embeddings of every catalog item, in
    catalog order, from `content_model`, a trained `EM3Ranker` with item content."""
    if getattr(content_model, "content", None) is None:
        raise ValueError("`source='em3'` needs `content_model`: a trained EM3Ranker with item "
                         "content (the first stage, `EM3Config.first_stage`).")
    if not np.array_equal(content_model.content.catalog_item_ids, F.keys_of(catalog.item_ids)):
        raise ValueError("`content_model` was built on another catalog than `catalog`.")
    return _l2_normalised(content_model.content.encode_all().numpy()[1:])  # row 0: unknown


def item_representation(catalog: ItemCatalog, source: str = "content",
                        train_split: Optional[dict] = None, seed: int = 0,
                        content_model=None) -> np.ndarray:
    """`[N, D]` representation of every catalog item, in catalog order, that codes quantize:
    the frozen `"content"` features, those features `"aligned"` on the training split's
    co-engagement pairs (which `train_split` then provides), or the `"em3"` content
    embeddings of `content_model`."""
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {SOURCES}, got {source!r}.")
    if source == "em3":
        return trained_content_embeddings(catalog, content_model)
    features = content_features(catalog)
    if source == "aligned":
        if train_split is None:
            raise ValueError("`source='aligned'` needs `train_split` (its co-engagement pairs).")
        pairs = co_engagement_pairs(train_split)
        index = {key: row for row, key in enumerate(catalog.item_ids.tolist())}
        rows = np.array([(index[a], index[b]) for a, b in pairs.tolist()
                         if a in index and b in index], np.int64).reshape(-1, 2)
        features = aligned_embeddings(features, rows, seed=seed)
    return features


def item_codes(catalog: ItemCatalog, levels: int, codebook_size: int, source: str = "content",
               train_split: Optional[dict] = None, seed: int = 0,
               content_model=None) -> np.ndarray:
    """RQ-KMeans codes `[N, levels]` (int32) of every catalog item, in catalog order, from
    its `item_representation`."""
    features = item_representation(catalog, source, train_split, seed, content_model)
    quantizer = ResidualQuantizer(levels, codebook_size, seed=seed).fit(features)
    return quantizer.encode(features).numpy()
