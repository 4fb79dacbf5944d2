"""Command line: train an EM3 ranker variant, evaluate it, export a SavedModel.

    python -m em3_tf.train --data synthetic --preset em3 --epochs 5 --out runs/em3

`--data synthetic` is SYNTHETIC demo data (see `em3_tf.data.synthetic`).

A killed run resumes: the training state is backed up at the end of every epoch to
`<out>/backup` (`--backup-dir`); running the same command again continues after the last
finished epoch (early stopping state, best weights and learning-rate schedule included) and
removes the backup once the run is complete. A backup written with other arguments is
refused; delete it (or pass `--no-backup`) to start over.
"""

import argparse
import json
import os
import sys

from em3_tf.config import PRESETS, EM3Config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="em3-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic",
                        help="'synthetic' (planted-structure demo data) or a directory written "
                             "by `python -m em3_tf.data.build`")
    parser.add_argument("--protocol", default="temporal", choices=["temporal", "item_cold"],
                        help="split protocol of a built data directory")
    parser.add_argument("--preset", default="em3", choices=sorted(PRESETS),
                        help="model variant (default: em3)")
    parser.add_argument("--config", help="JSON file or string of EM3Config overrides")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/em3", help="output directory")
    parser.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    parser.add_argument("--backup-dir",
                        help="where the resumable training backup goes (default: <out>/backup)")
    parser.add_argument("--no-backup", action="store_true",
                        help="no backup: a killed run starts over")
    return parser.parse_args(argv)


ARGS_FILE = "args.json"


def _claim_backup(backup_dir, args):
    """Records the arguments in `backup_dir`; exits if it holds the backup of a run with other
    arguments (it would not fit this model, or would continue another training)."""
    import tensorflow as tf
    mine = {k: v for k, v in vars(args).items() if k not in ("backup_dir", "no_backup")}
    path = os.path.join(backup_dir, ARGS_FILE)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            theirs = json.load(f)
        if theirs != mine:
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise SystemExit(f"{backup_dir} holds the backup of a run with other arguments "
                             f"({', '.join(changed)}): run that command again to resume it, or "
                             f"delete the directory (or pass --no-backup) to start over.")
        return
    tf.io.gfile.makedirs(backup_dir)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(mine, f, indent=2, sort_keys=True)


def _overrides(text):
    if not text:
        return {}
    if os.path.exists(text):
        with open(text) as f:
            return json.load(f)
    return json.loads(text)


def load_data(name, protocol, config: EM3Config, seed):
    if name == "synthetic":
        from em3_tf.data.synthetic import make_synthetic
        return make_synthetic(max_history_len=config.max_history_len, seed=seed)
    if not os.path.isdir(os.path.join(name, protocol)):
        raise SystemExit(f"--data {name}: no '{protocol}' split there; build it with "
                         f"`python -m em3_tf.data.build --out {name}`.")
    from em3_tf.data.records import load_dataset
    return load_dataset(name, protocol)


def main(argv=None):
    args = parse_args(argv)
    config = EM3Config.preset(args.preset, **_overrides(args.config))
    from em3_tf import training
    from em3_tf.export import export_saved_model

    data = load_data(args.data, args.protocol, config, args.seed)
    print(f"data: {data.name} ({data.protocol}); "
          + ", ".join(f"{k}={len(v['item_id'])}" for k, v in data.splits.items()), flush=True)
    os.makedirs(args.out, exist_ok=True)
    backup_dir = None if args.no_backup else (args.backup_dir
                                              or os.path.join(args.out, "backup"))
    if backup_dir:
        _claim_backup(backup_dir, args)
    model, report = training.train_and_evaluate(
        config, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        log_dir=os.path.join(args.out, "tensorboard"),
        checkpoint_dir=os.path.join(args.out, "checkpoints"), backup_dir=backup_dir)
    report = {"data": data.name, "preset": args.preset, "config": config.get_config(), **report}
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    if not args.no_export:
        export_dir = os.path.join(args.out, "saved_model")
        if os.path.exists(export_dir):
            import shutil
            shutil.rmtree(export_dir)
        report["saved_model"] = export_saved_model(model, export_dir)
    training.remove_backup(backup_dir)  # the run is complete: nothing left to resume
    summary = {k: report[k] for k in ("auc", "gauc", "logloss", "cold_auc", "warm_auc",
                                      "train_seconds")}
    print("test:", json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
