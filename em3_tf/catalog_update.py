"""Add items to a pushed EM3 model without retraining: a new served version that knows them.

    python -m em3_tf.catalog_update --base artifacts/serving/em3 --items new_items.csv

The items table has the data build's item columns (`item_id`, `title`, optional `genres`
`|`-separated, and `year`). Their token features are made with the same frozen encoders and
settings as the model's catalog (`assets.extra/catalog_encoding.json`), the exported model's
own content encoder (`encode_items` signature: the trained Fusion-Q-Former, and the LoRA
branch for histories) turns them into content embeddings, and those rows are appended to the
export's content table. The result is written as the next version under `--base`, atomically
(a temporary directory renamed into place), so TF Serving, or the local stand-in, picks it up
like any push: every existing item scores exactly as before, and the new items are scored
from their content (their ids are unknown to the ID embeddings, like any cold item).
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Optional

import numpy as np

from em3_tf._tf import tf
from em3_tf.features import keys_of
from em3_tf.catalog import ItemCatalog
from em3_tf.export import CATALOG_ENCODING_FILE, set_method_names
from em3_tf.interface import ENCODE_SIGNATURE
from em3_tf.layers.content_table import sorted_by_id
from serving.stand_in.versions import version_dirs


def source_dir(base: str, source_version: Optional[int] = None) -> str:
    """The directory of version `source_version` under `base` (default: the newest complete
    version, as a model server would see it)."""
    versions = version_dirs(base)
    if not versions:
        raise ValueError(f"No pushed version under {base}.")
    if source_version is None:
        source_version = max(versions)
    return os.path.join(base, versions.get(source_version, str(source_version)))


def add_items(base: str, items: ItemCatalog, source_version: Optional[int] = None) -> str:
    """Writes `base/<newest + 1>`: version `source_version` (default the newest) with `items`
    appended to its content table; returns the new version directory.

    Raises:
      ValueError: the version has no content table, an item is already in it, or the item
        token features do not match the model's modalities and shapes.
    """
    source = source_dir(base, source_version)
    loaded = tf.saved_model.load(source)
    if not hasattr(loaded, "content_table") or ENCODE_SIGNATURE not in loaded.signatures:
        raise ValueError(f"{source} has no content table: only models with item content "
                         f"(exported by em3_tf.export with content_table=True) take new items.")
    table = loaded.content_table
    id_spec = loaded.signatures["predict_features"].structured_input_signature[1]["item_id"]
    if id_spec.dtype == tf.string:  # the model's ids are strings: "17" is not 17's key
        items = dataclasses.replace(items, item_ids=items.item_ids.astype(str))
    known, new = table.item_ids.numpy(), keys_of(items.item_ids)
    clash = items.item_ids[np.isin(new, known)]
    if len(clash):
        raise ValueError(f"Item ids already in the served catalog: {clash[:10].tolist()}"
                         f"{' ...' if len(clash) > 10 else ''}.")
    encode = loaded.signatures[ENCODE_SIGNATURE]
    expected = dict(encode.structured_input_signature[1])
    inputs = {}
    for name in items.tokens:
        inputs[f"{name}_tokens"] = tf.constant(items.tokens[name], tf.float32)
        inputs[f"{name}_mask"] = tf.constant(items.masks[name], tf.bool)
    if set(inputs) != set(expected) or any(
            not expected[k].shape[1:].is_compatible_with(v.shape[1:]) for k, v in inputs.items()):
        given = sorted((k, tuple(v.shape)) for k, v in inputs.items())
        wanted = sorted((k, tuple(spec.shape)) for k, spec in expected.items())
        raise ValueError(f"The new items' token features {given} do not match the model's "
                         f"{wanted}.")
    embeddings = {k: v.numpy() for k, v in encode(**inputs).items()}
    branches = dict(table.tables)
    ids = np.concatenate([known, new])
    merged = {name: np.concatenate([branches[name].numpy(), embeddings[name]])
              for name in branches}
    ids, merged = sorted_by_id(ids, merged)
    table.item_ids.assign(ids)
    for name, value in merged.items():
        branches[name].assign(value)
    version = max(version_dirs(base)) + 1
    target = os.path.join(base, str(version))
    tmp = target + ".tmp-export"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(loaded, tmp, signatures=dict(loaded.signatures))
    set_method_names(tmp)
    extra = os.path.join(source, "assets.extra")
    tf.io.gfile.makedirs(os.path.join(tmp, "assets.extra"))
    for name in tf.io.gfile.listdir(extra):
        tf.io.gfile.copy(os.path.join(extra, name), os.path.join(tmp, "assets.extra", name),
                         overwrite=True)
    tf.io.gfile.rename(tmp, target)
    return target


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m em3_tf.catalog_update", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the pushed base directory (<base>/<version>)")
    p.add_argument("--items", required=True, help="CSV or Parquet item table of the new items")
    p.add_argument("--source-version", type=int, help="version to extend (default: newest)")
    p.add_argument("--text-preset", help="override the recorded text encoder preset directory")
    args = p.parse_args(argv)
    from em3_tf.data.movielens import encode_catalog, read_items

    source = source_dir(args.base, args.source_version)
    with tf.io.gfile.GFile(os.path.join(source, "assets.extra", CATALOG_ENCODING_FILE)) as f:
        encoding = json.load(f)
    if not encoding:
        raise SystemExit(f"{source} does not record how its catalog was encoded "
                         f"({CATALOG_ENCODING_FILE} is empty): encode the new items yourself "
                         f"and call em3_tf.catalog_update.add_items.")
    items = encode_catalog(read_items(args.items), text_preset=args.text_preset,
                           encoding=encoding)
    target = add_items(args.base, items, args.source_version)
    print(f"added {len(items)} item(s) to {source}: new version {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
