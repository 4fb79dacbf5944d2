"""Run the EM3 TFX pipeline locally (LocalDagRunner, SQLite ML Metadata, Beam DirectRunner).

    python -m pipelines.local_runner                     # MovieLens-100K, built if missing
    python -m pipelines.local_runner --data synthetic    # SYNTHETIC demo data
    python -m pipelines.local_runner --beam-arg=--runner=FlinkRunner --beam-arg=--flink_master=HOST:8081

Prints where every component's artifacts went, the evaluation summary (overall, cold-item and
warm-item AUC), whether the model was blessed and where it was pushed. Exit status: 0 when
the model was blessed and pushed, `NOT_BLESSED` (3) when it was not (the failed threshold and
by how much are printed).

Each data set gets its own pipeline name, ML Metadata database, pipeline root, served model
name and push directory by default (`PipelineConfig.for_data`), and a pipeline name is bound
to the data directory of its first run, so two data sets never share a baseline.
"""

import argparse
import json
import logging
import os
import sys

from pipelines import run_log
from pipelines.config import PipelineConfig

NOT_BLESSED = 3

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m pipelines.local_runner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = PipelineConfig()
    p.add_argument("--data", default="ml-100k",
                   help="'ml-100k' (default), 'synthetic', or a directory written by "
                        "`python -m em3_tf.data.build`")
    p.add_argument("--protocol", default=d.protocol, choices=["temporal", "item_cold"])
    p.add_argument("--preset", default=d.preset, help="EM3Config preset to train")
    p.add_argument("--em3-config", default="{}", help="JSON of EM3Config overrides")
    p.add_argument("--epochs", type=int, default=d.epochs, help="at most this many epochs")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="early stopping on eval AUC after this many epochs without gain "
                        "(0: never)")
    p.add_argument("--tune", action="store_true",
                   help="run the Tuner (KerasTuner random search) before training and train "
                        "with its best hyper-parameters")
    p.add_argument("--max-trials", type=int, default=d.max_trials, help="Tuner trials")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--distribute", default=d.distribute, choices=["auto", "mirrored", "default"])
    p.add_argument("--mixed-precision", action="store_true")
    p.add_argument("--auc-floor", type=float, default=None,
                   help="eval AUC a model needs to be blessed (default: the popularity "
                        "baseline's eval AUC, recorded by the data build)")
    p.add_argument("--schema", default=None,
                   help="TFMD schema to validate against (default: <data>/schema.pbtxt)")
    p.add_argument("--regression-tolerance", type=float, default=d.regression_tolerance)
    p.add_argument("--pipeline-name", default=None)
    p.add_argument("--work-dir", default=d.work_dir, help="pipeline root and ML Metadata")
    p.add_argument("--serving-dir", default=d.serving_dir, help="Pusher base directory")
    p.add_argument("--model-name", default=None,
                   help="served model name, and its push directory under --serving-dir "
                        "(default: em3 for MovieLens-100K, em3-<data name> otherwise)")
    p.add_argument("--beam-arg", action="append", default=None,
                   help="a Beam pipeline argument (repeatable); default: DirectRunner in memory")
    p.add_argument("--no-cache", action="store_true", help="re-run every component")
    p.add_argument("--verbose", action="store_true",
                   help="every library's own log output (TFX, Beam, TensorFlow, ...)")
    p.add_argument("--logical-cpus", type=int, default=0,
                   help="split the CPU into N logical devices (to exercise --distribute "
                        "mirrored without GPUs)")
    return p.parse_args(argv)


def _current(data_dir: str) -> bool:
    """Whether `data_dir` holds a build of today's format (with its schema and the recorded
    popularity floor); an older automatic build is rebuilt."""
    summary = os.path.join(data_dir, "summary.json")
    if not (os.path.exists(summary) and os.path.exists(os.path.join(data_dir, "schema.pbtxt"))):
        return False
    with open(summary) as f:
        protocols = json.load(f)["protocols"].values()
    return all("popularity_eval_auc" in p for p in protocols)


def ensure_data(data: str) -> str:
    """The data directory for `data`, built with `em3_tf.data.build` if it is not there yet."""
    if data not in ("ml-100k", "synthetic"):
        if not os.path.exists(os.path.join(data, "summary.json")):
            raise SystemExit(f"--data {data}: no summary.json; build it with "
                             f"`python -m em3_tf.data.build --out {data}`.")
        return data
    out = os.path.join("artifacts", data)
    if not _current(out):
        from em3_tf.data import build
        print(f"building {data} data into {out} ...", flush=True)
        build.main(["--out", out] + (["--source", "synthetic"] if data == "synthetic" else []))
    return out


def config_from_args(args) -> PipelineConfig:
    return PipelineConfig.for_data(
        ensure_data(args.data), pipeline_name=args.pipeline_name, model_name=args.model_name,
        schema_file=args.schema, protocol=args.protocol, work_dir=args.work_dir,
        serving_dir=args.serving_dir, preset=args.preset,
        em3_overrides=json.loads(args.em3_config), epochs=args.epochs, patience=args.patience,
        tune=args.tune, max_trials=args.max_trials, batch_size=args.batch_size, seed=args.seed,
        distribute=args.distribute, mixed_precision=args.mixed_precision,
        auc_floor=args.auc_floor, regression_tolerance=args.regression_tolerance,
        beam_args=tuple(args.beam_arg) if args.beam_arg else None,
        enable_cache=not args.no_cache)


def bind_data(config: PipelineConfig) -> None:
    """Records the pipeline's data directory on its first run; refuses another one later, so
    that a model is never compared with, or replaces, one trained on other data."""
    path = os.path.join(os.path.dirname(config.metadata_path), "data.json")
    data = os.path.abspath(config.data_dir)
    if os.path.exists(path):
        with open(path) as f:
            bound = json.load(f)["data_dir"]
        if bound != data:
            raise SystemExit(f"Pipeline '{config.pipeline_name}' was run on {bound}, not "
                             f"{data}: pass another --pipeline-name (and --model-name) to keep "
                             f"the two data sets' metadata, baselines and pushes apart.")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"data_dir": data}, f)


def run(config: PipelineConfig) -> dict:
    """Runs the pipeline and returns `summarize(config)`."""
    from tfx import v1 as tfx

    from pipelines.pipeline import create_pipeline
    bind_data(config)
    tfx.orchestration.LocalDagRunner().run(create_pipeline(config))
    return summarize(config)


def _latest_outputs(store, pipeline_root):
    """`{"<Component>/<output>": newest artifact}` from ML Metadata."""
    latest = {}
    for artifact in store.get_artifacts():
        if not artifact.uri.startswith(pipeline_root):
            continue
        key = "/".join(os.path.relpath(artifact.uri, pipeline_root).split(os.sep)[:2])
        if key not in latest or artifact.id > latest[key].id:
            latest[key] = artifact
    return latest


def _auc(eval_uri, slice_key):
    import tensorflow_model_analysis as tfma
    result = tfma.load_eval_result(eval_uri)
    for key, metrics in result.slicing_metrics:
        if tuple(key) == slice_key:
            values = metrics[""][""]
            return {name: round(values[name]["doubleValue"], 4)
                    for name in ("auc", "binary_crossentropy", "calibration", "example_count")
                    if name in values and "doubleValue" in values[name]}
    return None


def failed_thresholds(eval_uri) -> list:
    """One line per threshold the Evaluator's validation failed: the metric, its value, the
    threshold and by how much it was missed."""
    import tensorflow_model_analysis as tfma
    lines = []
    for per_slice in tfma.load_validation_result(eval_uri).metric_validations_per_slice:
        for failure in per_slice.failures:
            value = failure.metric_value.double_value.value
            threshold = failure.metric_threshold
            name = failure.metric_key.name
            if failure.metric_key.is_diff:
                bound = threshold.change_threshold.absolute.value
                lines.append(f"{name} change vs the latest blessed model {value:+.4f} is below "
                             f"the allowed {bound:+.4f} (by {bound - value:.4f})")
            elif threshold.value_threshold.HasField("lower_bound"):
                bound = threshold.value_threshold.lower_bound.value
                lines.append(f"{name} {value:.4f} is below the floor {bound:.4f} (by "
                             f"{bound - value:.4f})")
            else:
                lines.append(f"{name}: {failure.message}")
    return lines


def summarize(config: PipelineConfig) -> dict:
    """Where the latest artifacts are, the evaluation summary, blessing and push."""
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    from em3_tf.data.splits import IS_COLD, IS_NEW_USER
    store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(config.metadata_path))
    outputs = _latest_outputs(store, config.pipeline_root)
    summary = {"artifacts": {key: a.uri for key, a in sorted(outputs.items())}}
    evaluation = outputs.get("Evaluator/evaluation")
    if evaluation is not None:
        summary["evaluation"] = {"overall": _auc(evaluation.uri, ()),
                                 "cold_items": _auc(evaluation.uri, ((IS_COLD, 1),)),
                                 "warm_items": _auc(evaluation.uri, ((IS_COLD, 0),)),
                                 "new_users": _auc(evaluation.uri, ((IS_NEW_USER, 1),)),
                                 "returning_users": _auc(evaluation.uri, ((IS_NEW_USER, 0),))}
    blessing = outputs.get("Evaluator/blessing")
    if blessing is not None:
        summary["blessed"] = bool(blessing.custom_properties["blessed"].int_value)
        if not summary["blessed"] and evaluation is not None:
            summary["failed_thresholds"] = failed_thresholds(evaluation.uri)
    pushed = outputs.get("Pusher/pushed_model")
    if pushed is not None:
        props = pushed.custom_properties
        summary["pushed"] = bool(props["pushed"].int_value)
        if summary["pushed"]:
            summary["pushed_to"] = props["pushed_destination"].string_value
    versions = sorted(os.listdir(config.push_base)) if os.path.isdir(config.push_base) else []
    summary["serving_versions"] = versions
    return summary


def main(argv=None):
    args = parse_args(argv)
    if not args.verbose:
        run_log.quiet()
    if args.logical_cpus > 1:
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
        config = config_from_args(args)
        return report(config, run(config))
    with run_log.component_lines() as lines:
        config = config_from_args(args)
        lines.config = config
        print(f"EM3 pipeline '{config.pipeline_name}' on {config.data_dir} "
              f"({config.protocol}); artifacts under {config.pipeline_root}", flush=True)
        summary = run(config)
    return report(config, summary)


def report(config: PipelineConfig, summary: dict) -> int:
    """Prints the evaluation, the blessing and the push; returns the exit status."""
    os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
    with open(os.path.join(os.path.dirname(config.metadata_path), "last_run.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("=== evaluation (eval split) ===")
    print(f"  {'slice':16s} {'examples':>9s} {'AUC':>7s} {'log-loss':>9s} {'calibration':>12s}")
    for name, metrics in (summary.get("evaluation") or {}).items():
        m = metrics or {}
        print(f"  {name:16s} {m.get('example_count', 0):9.0f} {m.get('auc', float('nan')):7.4f} "
              f"{m.get('binary_crossentropy', float('nan')):9.4f} "
              f"{m.get('calibration', float('nan')):12.3f}")
    print(f"blessed: {summary.get('blessed')} (AUC floor {config.value_floor():.4f}); pushed: "
          f"{summary.get('pushed')} {summary.get('pushed_to', '')}")
    for line in summary.get("failed_thresholds", []):
        print(f"  not blessed: {line}")
    print(f"serving versions under {config.push_base}: {summary['serving_versions']}",
          flush=True)
    return 0 if summary.get("blessed") else NOT_BLESSED


if __name__ == "__main__":
    sys.exit(main())
