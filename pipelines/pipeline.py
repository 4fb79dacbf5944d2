"""The EM3 TFX pipeline definition (no runner here; see local_runner.py, kubeflow_runner.py).

ImportExampleGen -> StatisticsGen -> ImportSchemaGen -> ExampleValidator -> AnomaliesGate
  -> Transform -> ItemCatalogGen -> [EM3Tuner (--tune) | Importer of the recorded best
  hyper-parameters] -> EM3Trainer -> (latest blessed model) Evaluator -> Pusher
"""

import os

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from em3_tf import features as F
from em3_tf.data.records import FILE_NAME, USER_ACTIVITY
from em3_tf.data.splits import IS_COLD, IS_NEW_USER
from em3_tf.interface import SIGNATURE_OUTPUT
from pipelines.components import AnomaliesGate, EM3Trainer, EM3Tuner, ItemCatalogGen
from pipelines.config import PipelineConfig, resolve
from pipelines.fingerprint import code_fingerprint

PREPROCESSING_FN = "em3_tf.tfx.preprocessing.preprocessing_fn"
RUN_FN = "em3_tf.tfx.trainer.run_fn"
TUNER_FN = "em3_tf.tfx.tuner.tuner_fn"
SLICES = (IS_COLD, IS_NEW_USER, USER_ACTIVITY)


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    """TFMA on the serving signature: AUC, log-loss, calibration; overall and per slice (cold /
    warm items, new / returning users, user activity).

    Blessing (on the overall slice): AUC >= `value_floor()` (by default the popularity
    baseline's), and no worse than the latest blessed model of this pipeline by more than
    `regression_tolerance`. Slices are reported, not thresholded.
    """
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": config.value_floor()}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -config.regression_tolerance}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=F.LABEL,
                                    prediction_key=SIGNATURE_OUTPUT)],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[name])
                                              for name in SLICES],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=[
                tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()],
                                             threshold=auc_threshold)]),
            tfma.MetricConfig(class_name="BinaryCrossentropy"),
            tfma.MetricConfig(class_name="Calibration"),
            tfma.MetricConfig(class_name="CalibrationPlot"),
        ])])


def create_pipeline(config: PipelineConfig) -> tfx.dsl.Pipeline:
    input_config = tfx.proto.Input(splits=[
        tfx.proto.Input.Split(name=split, pattern=f"{split}/{FILE_NAME}")
        for split in ("train", "eval")])
    example_gen = tfx.components.ImportExampleGen(
        input_base=resolve(os.path.join(config.data_dir, config.protocol)),
        input_config=input_config)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_path())
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(  # the code fingerprint keys TFX's cache
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={"code": code_fingerprint(PREPROCESSING_FN.rsplit(".", 1)[0])})
    transform.add_upstream_node(gate)
    catalog = ItemCatalogGen(catalog_dir=resolve(os.path.join(config.data_dir, "catalog")),
                             fingerprint=config.catalog_fingerprint())
    training_inputs = dict(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"], item_catalog=catalog.outputs["item_catalog"],
        train_args=tfx.proto.TrainArgs(),  # the Trainer counts its examples at run time
        eval_args=tfx.proto.EvalArgs(num_steps=0))
    config.em3_config()  # fails here, naming the field, on a bad override
    custom_config = {"preset": config.preset, "em3_overrides": dict(config.em3_overrides),
                     "epochs": config.epochs,
                     "patience": config.patience, "batch_size": config.batch_size,
                     "seed": config.seed, "distribute": config.distribute,
                     "mixed_precision": config.mixed_precision, "model_name": config.model_name,
                     "code": code_fingerprint(RUN_FN.rsplit(".", 1)[0])}
    hyperparameter_nodes = []
    if config.tune:
        tuner = EM3Tuner(tuner_fn=TUNER_FN,
                         custom_config={**custom_config, "max_trials": config.max_trials,
                                        "code": code_fingerprint(TUNER_FN.rsplit(".", 1)[0])},
                         **training_inputs)
        hyperparameter_nodes, best = [tuner], tuner.outputs["best_hyperparameters"]
    elif config.recorded_hyperparameters():
        importer = tfx.dsl.Importer(
            source_uri=config.recorded_hyperparameters(),
            artifact_type=tfx.types.standard_artifacts.HyperParameters,
        ).with_id("recorded_hyperparameters")
        hyperparameter_nodes, best = [importer], importer.outputs["result"]
    else:
        best = None
    trainer = EM3Trainer(run_fn=RUN_FN, custom_config=custom_config, hyperparameters=best,
                         **training_inputs)
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"], eval_config=eval_config(config))
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.push_base)))
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, gate,
                    transform, catalog, *hyperparameter_nodes, trainer, baseline, evaluator,
                    pusher],
        enable_cache=config.enable_cache,
        metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(config.metadata_path),
        beam_pipeline_args=list(config.beam_args))
