"""A local model server speaking TensorFlow Serving's gRPC API, for machines without the binary.

    python -m serving.local_server --model_name=em3 --model_base_path=artifacts/serving/em3 --port=8500
    python -m serving.local_server --model_config_file=serving/models.config --port=8500

This is an embedded default for development and CI. Production runs TensorFlow Serving
(`tensorflow_model_server`) with the files in `serving/`; the same client code talks to both.

What it implements, with TF Serving's messages and status codes (official
`tensorflow_serving.apis` protos and stubs):
  - PredictionService: Predict, Classify, Regress, GetModelMetadata;
  - ModelService: GetModelStatus;
  - versions: `<base_path>/<integer version>/` directories, served once `saved_model.pb` is
    there (TFX's Pusher and TF Serving write it last) and the model loads; the newest complete
    version is the default, specific versions and version labels (`models.config`) on request;
    a newly pushed version is loaded in the background and swapped in atomically, so requests
    never fail during a push; a version that fails to load is never served;
  - batching: concurrent Predict calls on the same servable and signature are merged into one
    model call (up to `max_batch_size` examples, waiting at most `batch_timeout_micros`);
  - errors: INVALID_ARGUMENT (bad or missing input, malformed tf.Example, empty request, wrong
    signature kind), NOT_FOUND (unknown model, version, label or signature), UNAVAILABLE (no
    version loaded yet), RESOURCE_EXHAUSTED (a message above the size limit, from gRPC). The
    server keeps serving after any of them.
"""

import argparse
import concurrent.futures
import logging
import os
import queue
import re
import sys
import threading
import time
from typing import Dict, List, Optional

import grpc
import numpy as np
from google.protobuf import text_format

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,  # noqa: E402
                                     get_model_status_pb2, model_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

log = logging.getLogger("em3.local_server")
PREDICT, CLASSIFY, REGRESS = ("tensorflow/serving/predict", "tensorflow/serving/classify",
                              "tensorflow/serving/regress")


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _version_dirs(base_path) -> List[int]:
    if not tf.io.gfile.isdir(base_path):
        return []
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(base_path)
                  if re.fullmatch(r"\d+/?", name))


class _Batcher:
    """Merges concurrent calls of one signature into batched calls (batch dim 0 everywhere)."""

    def __init__(self, fn, max_batch_size, timeout_s):
        self.fn, self.max_batch_size, self.timeout_s = fn, max_batch_size, timeout_s
        self.queue: "queue.Queue" = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.put((inputs, future))
        return future.result()

    def _loop(self):
        while True:
            batch = [self.queue.get()]
            size = len(next(iter(batch[0][0].values())))
            deadline = time.monotonic() + self.timeout_s
            while size < self.max_batch_size:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(item)
                size += len(next(iter(item[0].values())))
            self._run(batch)

    def _run(self, batch):
        groups: Dict[tuple, list] = {}
        for inputs, future in batch:  # only requests with the same input keys are merged
            groups.setdefault(tuple(sorted(inputs)), []).append((inputs, future))
        for keys, items in groups.items():
            try:
                merged = {k: np.concatenate([i[k] for i, _ in items]) for k in keys}
                outputs = {k: v.numpy() for k, v in self.fn(
                    **{k: tf.constant(v) for k, v in merged.items()}).items()}
            except Exception:  # noqa: BLE001 - run alone to find the request at fault
                for inputs, future in items:
                    _run_one(self.fn, inputs, future)
                continue
            start = 0
            for inputs, future in items:
                n = len(next(iter(inputs.values())))
                future.set_result({k: v[start:start + n] for k, v in outputs.items()})
                start += n


def _run_one(fn, inputs, future):
    try:
        outputs = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        future.set_result({k: v.numpy() for k, v in outputs.items()})
    except tf.errors.InvalidArgumentError as error:
        future.set_exception(ServingError(grpc.StatusCode.INVALID_ARGUMENT, error.message))
    except UnicodeDecodeError:  # TF could not even format its message: the bytes are garbage
        future.set_exception(ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                          "Could not parse example input: not a serialized "
                                          "tf.Example"))
    except Exception as error:  # noqa: BLE001
        future.set_exception(ServingError(grpc.StatusCode.INTERNAL, str(error)))


class Servable:
    """One loaded version: the SavedModel, its signature defs and a batcher per signature."""

    def __init__(self, name, version, path, max_batch_size, batch_timeout_s):
        self.name, self.version, self.path = name, version, path
        self.model = tf.saved_model.load(path)
        proto = saved_model_pb2.SavedModel()
        with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        self.signature_defs = dict(proto.meta_graphs[0].signature_def)
        self.batchers = {key: _Batcher(self.model.signatures[key], max_batch_size,
                                       batch_timeout_s)
                         for key in self.model.signatures}

    def run(self, signature_name, inputs: Dict[str, np.ndarray], method=None):
        key = signature_name or "serving_default"
        if key not in self.signature_defs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f'Serving signature key "{key}" not found.')
        definition = self.signature_defs[key]
        if method and definition.method_name != method:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Expected {method.split('/')[-1]} signature method_name to be "
                               f"{method}. Was: {definition.method_name}")
        expected = set(definition.inputs)
        if set(inputs) != expected:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Request inputs {sorted(inputs)} do not match the signature "
                               f"'{key}' inputs {sorted(expected)}.")
        sizes = {len(v) if np.ndim(v) else -1 for v in inputs.values()}
        if sizes == {0}:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "The request has no examples.")
        if len(sizes) != 1 or -1 in sizes:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "Every input needs the same non-empty batch dimension.")
        for name, value in inputs.items():
            want = tf.dtypes.as_dtype(definition.inputs[name].dtype)
            if tf.dtypes.as_dtype(value.dtype) != want and not (
                    want == tf.string and value.dtype.kind in "SO"):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Input '{name}' must be {want.name}, got {value.dtype}.")
        return self.batchers[key](inputs)


class ModelManager:
    """Loads, serves and retires the versions of one model, polling its base path."""

    def __init__(self, config: model_server_config_pb2.ModelConfig, max_batch_size=256,
                 batch_timeout_s=0.002, poll_s=1.0):
        self.config = config
        self.max_batch_size, self.batch_timeout_s = max_batch_size, batch_timeout_s
        self.servables: Dict[int, Servable] = {}
        self.failed: Dict[int, str] = {}
        self.lock = threading.Lock()
        self.poll_s = poll_s
        self.refresh()
        threading.Thread(target=self._poll, daemon=True).start()

    @property
    def name(self):
        return self.config.name

    def _wanted(self, versions: List[int]) -> List[int]:
        policy = self.config.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return versions
        if kind == "specific":
            return [v for v in versions if v in set(policy.specific.versions)]
        keep = policy.latest.num_versions if kind == "latest" else 1
        return versions[-max(1, keep):]

    def refresh(self):
        complete = [v for v in _version_dirs(self.config.base_path)
                    if tf.io.gfile.exists(os.path.join(self.config.base_path, str(v),
                                                       "saved_model.pb"))]
        wanted = self._wanted(complete)
        for version in wanted:
            if version in self.servables or version in self.failed:
                continue
            path = os.path.join(self.config.base_path, str(version))
            try:
                servable = Servable(self.name, version, path, self.max_batch_size,
                                    self.batch_timeout_s)
            except Exception as error:  # noqa: BLE001 - a broken version is never served
                log.error("model %s version %d failed to load: %s", self.name, version, error)
                self.failed[version] = str(error)
                continue
            with self.lock:
                self.servables[version] = servable
            log.info("model %s version %d is AVAILABLE", self.name, version)
        with self.lock:
            for version in [v for v in self.servables if v not in wanted]:
                del self.servables[version]
                log.info("model %s version %d unloaded", self.name, version)

    def _poll(self):
        while True:
            time.sleep(self.poll_s)
            try:
                self.refresh()
            except Exception as error:  # noqa: BLE001 - keep polling
                log.error("polling %s: %s", self.config.base_path, error)

    def resolve(self, model_spec) -> Servable:
        with self.lock:
            servables = dict(self.servables)
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            label = model_spec.version_label
            if label not in self.config.version_labels:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Unrecognized servable version label: {label}")
            version = self.config.version_labels[label]
        elif choice == "version":
            version = model_spec.version.value
        else:
            if not servables:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   f"Servable not found for request: Latest({self.name}): no "
                                   f"version is loaded yet")
            return servables[max(servables)]
        if version not in servables:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({self.name}, "
                               f"{version})")
        return servables[version]

    def status(self, version: Optional[int]):
        with self.lock:
            loaded = sorted(self.servables)
        versions = loaded + sorted(self.failed)
        if version is not None:
            if version not in versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {self.name}")
            versions = [version]
        out = []
        for v in versions:
            status = get_model_status_pb2.ModelVersionStatus(version=v)
            if v in loaded:
                status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            else:
                status.state = get_model_status_pb2.ModelVersionStatus.END
                status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                status.status.error_message = self.failed[v]
            out.append(status)
        return out


def _abort(context, error: ServingError):
    context.abort(error.code, str(error))


class _Services(prediction_service_pb2_grpc.PredictionServiceServicer,
                model_service_pb2_grpc.ModelServiceServicer):

    def __init__(self, managers: Dict[str, ModelManager]):
        self.managers = managers

    def _servable(self, model_spec) -> Servable:
        if model_spec.name not in self.managers:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({model_spec.name})")
        return self.managers[model_spec.name].resolve(model_spec)

    def _spec(self, servable, signature_name):
        spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
        spec.version.value = servable.version
        return spec

    def Predict(self, request, context):
        try:
            servable = self._servable(request.model_spec)
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except Exception as error:  # noqa: BLE001
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Malformed input tensor: {error}") from None
            signature = request.model_spec.signature_name or "serving_default"
            outputs = servable.run(signature, inputs)
            wanted = list(request.output_filter) or list(outputs)
            unknown = [k for k in wanted if k not in outputs]
            if unknown:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {unknown}")
            response = predict_pb2.PredictResponse(model_spec=self._spec(servable, signature))
            for key in wanted:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
            return response
        except ServingError as error:
            _abort(context, error)

    def _run_on_examples(self, request, method):
        """Runs a Classify / Regress request: `(servable, signature, outputs)`."""
        examples = request.input.example_list.examples
        if not examples:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
        servable = self._servable(request.model_spec)
        signature = request.model_spec.signature_name or "serving_default"
        inputs = np.array([e.SerializeToString() for e in examples], dtype=object)
        return servable, signature, servable.run(signature, {"inputs": inputs}, method)

    def Classify(self, request, context):
        try:
            servable, signature, out = self._run_on_examples(request, CLASSIFY)
            response = classification_pb2.ClassificationResponse(
                model_spec=self._spec(servable, signature))
            for classes, scores in zip(out["classes"], out["scores"]):
                result = response.result.classifications.add()
                for label, score in zip(classes, scores):
                    result.classes.add(label=label.decode(), score=float(score))
            return response
        except ServingError as error:
            _abort(context, error)

    def Regress(self, request, context):
        try:
            servable, signature, out = self._run_on_examples(request, REGRESS)
            response = regression_pb2.RegressionResponse(
                model_spec=self._spec(servable, signature))
            for value in np.reshape(out["outputs"], [-1]):
                response.result.regressions.add(value=float(value))
            return response
        except ServingError as error:
            _abort(context, error)

    def GetModelMetadata(self, request, context):
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "Metadata field signature_def is the only one supported; "
                                   f"got {list(request.metadata_field)}")
            servable = self._servable(request.model_spec)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for key, definition in servable.signature_defs.items():
                signatures.signature_def[key].CopyFrom(definition)
            response = get_model_metadata_pb2.GetModelMetadataResponse(
                model_spec=self._spec(servable, ""))
            response.metadata["signature_def"].Pack(signatures)
            return response
        except ServingError as error:
            _abort(context, error)

    def GetModelStatus(self, request, context):
        try:
            name = request.model_spec.name
            if name not in self.managers:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of "
                                                              f"model {name}")
            version = (request.model_spec.version.value
                       if request.model_spec.HasField("version") else None)
            return get_model_status_pb2.GetModelStatusResponse(
                model_version_status=self.managers[name].status(version))
        except ServingError as error:
            _abort(context, error)


def read_model_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        text_format.Parse(f.read(), config)
    return config


def read_batching_parameters(path: str) -> Dict[str, int]:
    """`max_batch_size` and `batch_timeout_micros` from a TF Serving batching parameters file."""
    values = {}
    with open(path) as f:
        for key, value in re.findall(r"(\w+)\s*{\s*value:\s*(\d+)\s*}", f.read()):
            values[key] = int(value)
    return values


def serve(config: model_server_config_pb2.ModelServerConfig, port=8500, host="127.0.0.1",
          max_batch_size=256, batch_timeout_micros=2000, max_message_bytes=16 << 20,
          poll_s=1.0, workers=16) -> grpc.Server:
    """Starts the server (non-blocking) and returns it; `server.stop(0)` ends it."""
    configs = list(config.model_config_list.config)
    if not configs:
        raise ValueError("The model server config lists no model.")
    managers = {c.name: ModelManager(c, max_batch_size, batch_timeout_micros / 1e6, poll_s)
                for c in configs}
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes)])
    services = _Services(managers)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"Could not bind {host}:{port}.")
    server.port = bound
    server.start()
    log.info("serving %s on %s:%d", [c.name for c in configs], host, bound)
    return server


def single_model_config(name, base_path) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=os.path.abspath(base_path),
                                                model_platform="tensorflow")
    model.model_version_policy.latest.num_versions = 2
    return config


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m serving.local_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model_name", default="em3")
    p.add_argument("--model_base_path", help="<base>/<version>/saved_model.pb layout")
    p.add_argument("--model_config_file", help="a TF Serving models.config (text proto)")
    p.add_argument("--batching_parameters_file", help="TF Serving batching parameters file")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    p.add_argument("--max_message_bytes", type=int, default=16 << 20)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if bool(args.model_base_path) == bool(args.model_config_file):
        p.error("give exactly one of --model_base_path and --model_config_file")
    config = (read_model_config(args.model_config_file) if args.model_config_file
              else single_model_config(args.model_name, args.model_base_path))
    batching = (read_batching_parameters(args.batching_parameters_file)
                if args.batching_parameters_file else {})
    server = serve(config, args.port, args.host,
                   max_batch_size=batching.get("max_batch_size", 256),
                   batch_timeout_micros=batching.get("batch_timeout_micros", 2000),
                   max_message_bytes=args.max_message_bytes,
                   poll_s=args.file_system_poll_wait_seconds)
    print(f"local model server listening on {args.host}:{server.port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
