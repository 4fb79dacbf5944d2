"""A SYNTHETIC online-shop log with string ids - for tests and the "Your own data" demo only.

Nothing here is real behaviour. It has the shape of a team's own data: string user ids
(`u_0042`), string product ids (`SKU-00017`), ISO-8601 timestamps, 1-5 ratings and a product
table with titles and `|`-separated categories, written as the two CSV files that
`python -m em3_tf.data.build --interactions ... --items ...` reads. The structure: every
user likes one or two categories; a user mostly visits products of liked categories and
rates them higher, so a model that reads the product titles can rank products it has never
seen.

    python -m em3_tf.data.shop --out artifacts/shop-raw     # interactions.csv, items.csv
"""

import argparse
import os
import sys
from typing import Tuple

import numpy as np
import pandas as pd

CATEGORIES = ("Tops", "Shoes", "Bags", "Jackets", "Dresses", "Hats")
COLOURS = ("red", "blue", "black", "white", "green", "grey")
MATERIALS = ("cotton", "leather", "wool", "linen", "denim")


def make_shop(num_users=60, num_items=80, num_interactions=3000, seed=0
              ) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """`(interactions, items)` tables of a SYNTHETIC shop (see the module docstring)."""
    rng = np.random.default_rng(seed)
    category = rng.integers(len(CATEGORIES), size=num_items)
    items = pd.DataFrame({
        "item_id": [f"SKU-{k:05d}" for k in range(1, num_items + 1)],
        "title": [f"{rng.choice(COLOURS).capitalize()} {rng.choice(MATERIALS)} "
                  f"{CATEGORIES[c].lower()}" for c in category],
        "genres": [CATEGORIES[c] for c in category],
        "year": rng.integers(2019, 2025, size=num_items)})
    likes = np.zeros([num_users, len(CATEGORIES)], bool)
    for u in range(num_users):
        likes[u, rng.choice(len(CATEGORIES), size=rng.integers(1, 3), replace=False)] = True
    users = rng.integers(num_users, size=num_interactions)
    liked = likes[users[:, None], category[None, :]]  # [n, items]
    weights = np.where(liked, 3.0, 1.0)
    picks = np.array([rng.choice(num_items, p=w / w.sum()) for w in weights])
    hit = likes[users, category[picks]]
    rating = np.clip(np.rint(rng.normal(np.where(hit, 4.2, 2.4), 0.9)), 1, 5).astype(int)
    seconds = np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 90 * 86400,
                                   size=num_interactions))
    interactions = pd.DataFrame({
        "user_id": [f"u_{u:04d}" for u in users],
        "item_id": items["item_id"].to_numpy()[picks],
        "timestamp": pd.to_datetime(seconds, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rating": rating})
    return interactions, items


def write_shop(out: str, **kwargs) -> Tuple[str, str]:
    """Writes `<out>/interactions.csv` and `<out>/items.csv`; returns their paths."""
    os.makedirs(out, exist_ok=True)
    interactions, items = make_shop(**kwargs)
    paths = os.path.join(out, "interactions.csv"), os.path.join(out, "items.csv")
    interactions.to_csv(paths[0], index=False)
    items.to_csv(paths[1], index=False)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m em3_tf.data.shop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--interactions", type=int, default=15000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    paths = write_shop(args.out, num_users=args.users, num_items=args.items,
                       num_interactions=args.interactions, seed=args.seed)
    print("SYNTHETIC shop log (tests and demos only): " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
