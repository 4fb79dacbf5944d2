"""Fingerprints that make TFX's cache see what a component really depends on.

TFX re-uses a component's cached outputs when its inputs and execution properties did not
change. User code passed by import path (`preprocessing_fn`, `run_fn`, `tuner_fn`) is not
part of that key, and neither is the content of a file a parameter points to. So:

- `code_fingerprint(module)` hashes the source of `module` and of every project module it
  imports, transitively (found by reading the `import` statements, without importing). The
  pipeline puts it in the `custom_config` of Transform, Tuner and Trainer: an edit of the
  ranker re-runs the Trainer (and what reads its model) but not the Transform; an edit of
  `preprocessing.py` re-runs the Transform and everything after it.
- `files_fingerprint(directory)` hashes a directory's files (the item catalog), for
  `ItemCatalogGen`'s `fingerprint` parameter: a rebuilt catalog is published again.
"""

import ast
import hashlib
import os
from typing import Iterable, List, Optional, Set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("em3_tf", "pipelines")


def _module_file(name: str, root: str) -> Optional[str]:
    path = os.path.join(root, *name.split("."))
    for candidate in (path + ".py", os.path.join(path, "__init__.py")):
        if os.path.exists(candidate):
            return candidate
    return None


def _imported(tree: ast.AST) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def module_files(module: str, root: str = REPO) -> List[str]:
    """The project source files `module` depends on (itself, the packages it lies in and
    every project module it imports, transitively), sorted, relative to `root`."""
    seen: Set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if not name.startswith(PACKAGES):
            continue
        parts = name.split(".")
        for k in range(1, len(parts) + 1):  # the packages' __init__ files run first
            path = _module_file(".".join(parts[:k]), root)
            if path is None or path in seen:
                continue
            seen.add(path)
            with open(path) as f:
                todo.extend(_imported(ast.parse(f.read(), path)))
    if not seen:
        raise ValueError(f"Module {module!r} is not a source file under {root}.")
    return sorted(os.path.relpath(p, root) for p in seen)


def code_fingerprint(module: str, root: str = REPO) -> str:
    """sha256 (16 hex digits) of the sources in `module_files(module)`."""
    digest = hashlib.sha256()
    for path in module_files(module, root):
        with open(os.path.join(root, path), "rb") as f:
            digest.update(path.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:16]


def files_fingerprint(directory: str) -> str:
    """sha256 (16 hex digits) of the files directly in `directory` (local or a URI)."""
    import tensorflow as tf
    digest = hashlib.sha256()
    for name in sorted(tf.io.gfile.listdir(directory)):
        path = os.path.join(directory, name)
        if tf.io.gfile.isdir(path):
            continue
        with tf.io.gfile.GFile(path, "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:16]
