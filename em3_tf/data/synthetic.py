"""SYNTHETIC multimodal recommendation data with a planted structure - for tests and demos only.

Nothing here is real behaviour; reported results come from MovieLens-100K. The structure:

- every item has a latent topic; its modalities are generated from the topic:
  *image* patches = topic prototype + noise, *text* tokens = mostly the topic's words,
  *attributes* = a coarse genre (topic pair) token + a random "year" token; some items miss
  their image or text;
- users have random affinities to topics; a user sees items in proportion to affinity, and
  clicks with probability `sigmoid(gain * affinity[user, topic] + item_bias + offset)`;
- a `cold_fraction` of items is held out of training (`item_cold` protocol).

So a model that reads content can tell what a never-seen item is about and match it to the
user's history, while an ID-only model only has a shared out-of-vocabulary embedding.
"""

import numpy as np

from em3_tf import features as F
from em3_tf.catalog import ItemCatalog
from em3_tf.data.dataset import RankingData
from em3_tf.data.splits import TIMESTAMP, make_splits

MODALITY_SHAPES = {"image": (4, 24), "text": (6, 32), "attributes": (2, 8)}


def make_catalog(num_items, num_topics, seed=0, missing_image=0.25, missing_text=0.1):
    """Synthetic `ItemCatalog` (item ids 1..num_items) and each item's topic."""
    rng = np.random.default_rng(seed)
    topics = rng.integers(num_topics, size=num_items)
    (p_img, d_img), (t_txt, d_txt), (_, d_attr) = MODALITY_SHAPES.values()
    image_proto = rng.normal(size=[num_topics, p_img, d_img])
    image = image_proto[topics] + rng.normal(scale=0.8, size=[num_items, p_img, d_img])
    words_per_topic = 5
    vocab = rng.normal(size=[num_topics * words_per_topic + 20, d_txt])
    topic_word = topics[:, None] * words_per_topic + rng.integers(words_per_topic,
                                                                  size=[num_items, t_txt])
    any_word = rng.integers(len(vocab), size=[num_items, t_txt])
    words = np.where(rng.random([num_items, t_txt]) < 0.6, topic_word, any_word)
    text = vocab[words]
    text_len = rng.integers(3, t_txt + 1, size=num_items)
    genre = rng.normal(size=[(num_topics + 1) // 2, d_attr])
    year = rng.normal(size=[5, d_attr])
    attributes = np.stack([genre[topics // 2] + rng.normal(scale=0.3, size=[num_items, d_attr]),
                           year[rng.integers(5, size=num_items)]], axis=1)
    masks = {
        "image": np.repeat((rng.random(num_items) >= missing_image)[:, None], p_img, axis=1),
        "text": (np.arange(t_txt)[None] < text_len[:, None])
                & (rng.random(num_items) >= missing_text)[:, None],
        "attributes": np.ones([num_items, 2], bool),
    }
    tokens = {"image": image, "text": text, "attributes": attributes}
    tokens = {name: (value * masks[name][..., None]).astype(np.float32)
              for name, value in tokens.items()}
    catalog = ItemCatalog(np.arange(1, num_items + 1), tokens, masks, {"topic": topics})
    return catalog, topics


def make_synthetic(num_users=300, num_items=400, num_topics=8, interactions_per_user=(40, 80),
                   protocol="item_cold", cold_fraction=0.2, max_history_len=20, gain=1.8,
                   seed=0) -> RankingData:
    """A SYNTHETIC `RankingData` (see the module docstring)."""
    if interactions_per_user[1] > num_items:
        raise ValueError(f"`interactions_per_user` ({interactions_per_user}) must stay below "
                         f"`num_items` ({num_items}).")
    rng = np.random.default_rng(seed + 1)
    catalog, topics = make_catalog(num_items, num_topics, seed)
    affinity = rng.normal(scale=1.2, size=[num_users, num_topics])
    affinity -= affinity.mean(axis=1, keepdims=True)  # the signal is which topic, not who
    item_bias = rng.normal(scale=0.3, size=num_items)
    rows = {F.USER_ID: [], F.ITEM_ID: [], TIMESTAMP: [], F.LABEL: []}
    for user in range(num_users):
        n = rng.integers(*interactions_per_user)
        weight = np.exp(1.2 * affinity[user, topics])
        items = rng.choice(num_items, size=n, replace=False, p=weight / weight.sum())
        logit = gain * affinity[user, topics[items]] + item_bias[items] - 0.3
        rows[F.USER_ID].append(np.full(n, user + 1))
        rows[F.ITEM_ID].append(items + 1)
        rows[TIMESTAMP].append(rng.integers(0, 10_000_000, size=n))
        rows[F.LABEL].append((rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64))
    columns = {k: np.concatenate(v).astype(np.int64) for k, v in rows.items()}
    splits = make_splits(columns, catalog.item_ids, protocol=protocol, cold_fraction=cold_fraction,
                         seed=seed, max_len=max_history_len)
    return RankingData("synthetic", splits, catalog, (), protocol)
