"""Custom TFX components of the EM3 pipeline.

- `ItemCatalogGen`: publishes the item catalog (content token features of every catalog item)
  as an `em3.ItemCatalog` artifact, so its lineage is tracked in MLMD like any other input.
  Its `fingerprint` parameter (the catalog files' hash, `pipelines.fingerprint`) is part of
  TFX's cache key, so a rebuilt catalog is published again and the model retrained.
- `AnomaliesGate`: fails the run, before Transform and training, when ExampleValidator found
  anomalies; its message lists them by split and feature.
- `EM3Trainer`: TFX's Trainer with one more input channel, `item_catalog`, whose URI reaches
  `run_fn` as `fn_args.custom_config["item_catalog_uri"]`.
- `EM3Tuner`: TFX's Tuner (KerasTuner) with the same extra `item_catalog` input, for
  `tuner_fn`.
"""

import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.components.trainer import executor as trainer_executor
from tfx.components.tuner import executor as tuner_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from em3_tf.tfx.trainer import CATALOG_KEY


class EM3ItemCatalog(Artifact):
    """An item catalog directory (`catalog.npz`, `catalog.json`), see `em3_tf.catalog`."""

    TYPE_NAME = "em3.ItemCatalog"  # Kubeflow V2 needs "<namespace>.<Name>"


@tfx.dsl.components.component
def ItemCatalogGen(catalog_dir: tfx.dsl.components.Parameter[str],
                   fingerprint: tfx.dsl.components.Parameter[str],
                   item_catalog: tfx.dsl.components.OutputArtifact[EM3ItemCatalog]):
    """Copies the item catalog at `catalog_dir` (local or a URI) into the pipeline's artifact
    store; `fingerprint` (its files' hash) keys the cache."""
    from em3_tf.catalog import ItemCatalog

    catalog = ItemCatalog.load(catalog_dir)  # fails here, with its path, if it is unreadable
    tf.io.gfile.makedirs(item_catalog.uri)
    for name in ("catalog.npz", "catalog.json"):
        tf.io.gfile.copy(os.path.join(catalog_dir, name), os.path.join(item_catalog.uri, name),
                         overwrite=True)
    item_catalog.set_string_custom_property("fingerprint", fingerprint)
    item_catalog.set_int_custom_property("num_items", len(catalog))


class DataAnomalyError(RuntimeError):
    """The examples violate the schema; the run stops before Transform and training."""


@tfx.dsl.components.component
def AnomaliesGate(anomalies: tfx.dsl.components.InputArtifact[
        standard_artifacts.ExampleAnomalies]):
    """Raises `DataAnomalyError` listing every anomaly ExampleValidator found."""
    problems = []
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(anomalies.uri, f"Split-{split}", "SchemaDiff.pb")
        with tf.io.gfile.GFile(path, "rb") as f:
            found = anomalies_pb2.Anomalies.FromString(f.read())
        for feature, info in sorted(found.anomaly_info.items()):
            problems.append(f"{split}: feature '{feature}': {info.short_description} "
                            f"({info.description})")
        if found.HasField("dataset_anomaly_info"):
            problems.append(f"{split}: dataset: {found.dataset_anomaly_info.description}")
    if problems:
        raise DataAnomalyError("Examples violate the schema; nothing is trained or pushed:\n  "
                               + "\n  ".join(problems))


class EM3TrainerSpec(standard_component_specs.TrainerSpec):
    INPUTS = {**standard_component_specs.TrainerSpec.INPUTS,
              "item_catalog": ChannelParameter(type=EM3ItemCatalog)}


class EM3TrainerExecutor(trainer_executor.GenericExecutor):
    """TFX's generic Trainer executor, adding the item catalog URI to `custom_config`."""

    def _GetFnArgs(self, input_dict, output_dict, exec_properties):
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        fn_args.custom_config = dict(fn_args.custom_config or {})
        fn_args.custom_config[CATALOG_KEY] = artifact_utils.get_single_uri(
            input_dict["item_catalog"])
        return fn_args


class EM3Trainer(base_component.BaseComponent):
    """TFX Trainer whose `run_fn` also receives the `item_catalog` artifact."""

    SPEC_CLASS = EM3TrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(EM3TrainerExecutor)

    def __init__(self, examples, transform_graph, schema, item_catalog, run_fn: str,
                 train_args, eval_args, custom_config: dict, hyperparameters=None):
        spec = EM3TrainerSpec(
            examples=examples, transform_graph=transform_graph, schema=schema,
            item_catalog=item_catalog, hyperparameters=hyperparameters, run_fn=run_fn,
            train_args=train_args, eval_args=eval_args,
            custom_config=json_utils.dumps(custom_config),
            model=tfx.dsl.Channel(type=standard_artifacts.Model),
            model_run=tfx.dsl.Channel(type=standard_artifacts.ModelRun))
        super().__init__(spec=spec)


class EM3TunerSpec(standard_component_specs.TunerSpec):
    INPUTS = {**standard_component_specs.TunerSpec.INPUTS,
              "item_catalog": ChannelParameter(type=EM3ItemCatalog)}


class EM3TunerExecutor(tuner_executor.Executor):
    """TFX's Tuner executor, adding the item catalog URI to `custom_config`."""

    def Do(self, input_dict, output_dict, exec_properties):
        custom = json_utils.loads(exec_properties.get("custom_config") or "null") or {}
        custom[CATALOG_KEY] = artifact_utils.get_single_uri(input_dict["item_catalog"])
        super().Do(input_dict, output_dict,
                   {**exec_properties, "custom_config": json_utils.dumps(custom)})


class EM3Tuner(base_component.BaseComponent):
    """TFX Tuner whose `tuner_fn` also receives the `item_catalog` artifact; outputs
    `best_hyperparameters` (for the Trainer) and `tuner_results`."""

    SPEC_CLASS = EM3TunerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(EM3TunerExecutor)

    def __init__(self, examples, transform_graph, schema, item_catalog, tuner_fn: str,
                 train_args, eval_args, custom_config: dict):
        spec = EM3TunerSpec(
            examples=examples, transform_graph=transform_graph, schema=schema,
            item_catalog=item_catalog, tuner_fn=tuner_fn, train_args=train_args,
            eval_args=eval_args, custom_config=json_utils.dumps(custom_config),
            best_hyperparameters=tfx.dsl.Channel(type=standard_artifacts.HyperParameters),
            tuner_results=tfx.dsl.Channel(type=standard_artifacts.TunerResults))
        super().__init__(spec=spec)
