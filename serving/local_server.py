"""A local model server speaking TensorFlow Serving's APIs, for machines without the binary.

    python -m serving.local_server --model_name=em3 --model_base_path=artifacts/serving/em3 \\
        --port=8500 --rest_api_port=8501 --batching_parameters_file=serving/batching_parameters.txt
    python -m serving.local_server --model_config_file=serving/models.config --port=8500

This is a stand-in for development and CI. Production runs TensorFlow Serving
(`tensorflow_model_server`, see `serving/start_tf_serving.sh`) with the files in `serving/`;
the same client code talks to both, and the flags above are TF Serving's.

What it implements, with the official `tensorflow_serving.apis` protos and TF Serving 2.16's
status codes and messages (`serving/stand_in/`):
  - gRPC PredictionService (Predict, Classify, Regress, MultiInference, GetModelMetadata) and
    ModelService (GetModelStatus); Classify / Regress / MultiInference take `example_list` and
    `example_list_with_context`;
  - the REST API on `--rest_api_port` (`/v1/models/<name>[/versions/N|/labels/L]` with
    `:predict`, `:classify`, `:regress`, metadata and status, TF Serving's JSON formats) and
    Prometheus metrics at `/monitoring/prometheus/metrics`;
  - versions with TF Serving's availability-preserving policy: a new version is loaded and
    warmed up (`assets.extra/tf_serving_warmup_requests`) before it serves, the previous one
    serves until then, failed loads are retried with backoff, vanished versions are
    forgotten and re-created ones reloaded (`serving/stand_in/versions.py`);
  - batching (`serving/stand_in/batching.py`): requests above `max_batch_size` get
    INVALID_ARGUMENT, a full queue UNAVAILABLE, an expired deadline DEADLINE_EXCEEDED.
Where it still differs from TF Serving is listed in the README ("Serving").
"""

import argparse
import concurrent.futures
import logging
import os
import sys
import time
from typing import Dict, Optional

import grpc
from google.protobuf import text_format

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402,F401  (loads TF before the protos' users)
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,  # noqa: E402
                                     model_service_pb2_grpc, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from serving.stand_in import inference  # noqa: E402
from serving.stand_in.batching import BatchingParameters  # noqa: E402
from serving.stand_in.metrics import Metrics  # noqa: E402
from serving.stand_in.status import ServingError, invalid  # noqa: E402
from serving.stand_in.versions import VersionManager  # noqa: E402

log = logging.getLogger("em3.local_server")
APIS = {"predict": inference.predict, "classify": inference.classify,
        "regress": inference.regress, "multi_inference": inference.multi_inference}


class ModelServer:
    """The models of a `ModelServerConfig` and the request dispatch shared by gRPC and REST."""

    def __init__(self, config: model_server_config_pb2.ModelServerConfig,
                 batching: Optional[BatchingParameters] = BatchingParameters(), poll_s=1.0,
                 max_num_load_retries=5, load_retry_interval_s=1.0, warmup_iterations=1):
        configs = list(config.model_config_list.config)
        if not configs:
            raise ValueError("The model server config lists no model.")
        self.metrics = Metrics()
        self.managers: Dict[str, VersionManager] = {
            c.name: VersionManager(c, batching, poll_s, max_num_load_retries,
                                   load_retry_interval_s, warmup_iterations) for c in configs}

    def manager(self, model_spec) -> VersionManager:
        if model_spec is None:
            raise invalid("Missing ModelSpec")
        if not model_spec.name:
            raise invalid("ModelSpec has no name specified.")
        if model_spec.name not in self.managers:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({model_spec.name})")
        return self.managers[model_spec.name]

    def infer(self, api: str, request, entrypoint="GRPC", deadline: Optional[float] = None,
              prepare=None):
        """Runs `request` of `api` (a key of `APIS`) on the servable it names; `prepare(servable,
        request) -> request` completes it first where that needs the signatures (REST)."""
        start = time.monotonic()
        spec = request.tasks[0].model_spec if api == "multi_inference" and request.tasks else (
            None if api == "multi_inference" else request.model_spec)
        name, status = (spec.name if spec is not None else ""), "OK"
        try:
            with self.manager(spec).servable(spec) as servable:
                if prepare is not None:
                    request = prepare(servable, request)
                return APIS[api](servable, request, deadline)
        except ServingError as error:
            status = error.code.name
            raise
        except Exception:
            status = "UNKNOWN"
            raise
        finally:
            self.metrics.record(name, api, entrypoint, status, time.monotonic() - start)

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if list(request.metadata_field) != ["signature_def"]:
            raise invalid(f"Metadata field signature_def is the only one supported; got "
                          f"{list(request.metadata_field)}")
        with self.manager(request.model_spec).servable(request.model_spec) as servable:
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for key, definition in servable.signature_defs.items():
                signatures.signature_def[key].CopyFrom(definition)
            response = get_model_metadata_pb2.GetModelMetadataResponse(
                model_spec=inference.model_spec(servable, ""))
        response.metadata["signature_def"].Pack(signatures)
        return response

    def status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        if not spec.name:
            raise invalid("Missing ModelSpec" if not spec.ByteSize()
                          else "ModelSpec has no name specified.")
        if spec.name not in self.managers:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {spec.name}")
        version = spec.version.value if spec.HasField("version") else None
        return get_model_status_pb2.GetModelStatusResponse(
            model_version_status=self.managers[spec.name].status(version))

    def close(self):
        for manager in self.managers.values():
            manager.close()


def _deadline(context) -> Optional[float]:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e8 else time.monotonic() + remaining


class _GrpcServices(prediction_service_pb2_grpc.PredictionServiceServicer,
                    model_service_pb2_grpc.ModelServiceServicer):

    def __init__(self, server: ModelServer):
        self.server = server

    def _run(self, context, fn, *args):
        try:
            return fn(*args)
        except ServingError as error:
            message = str(error)
            context.abort(error.code, message if len(message) <= 1024
                          else message[:1024] + "...TRUNCATED")
        except Exception as error:  # noqa: BLE001 - the request fails, the server stays up
            log.exception("internal error")
            context.abort(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"[:1024])

    def Predict(self, request, context):
        return self._run(context, self.server.infer, "predict", request, "GRPC",
                         _deadline(context))

    def Classify(self, request, context):
        return self._run(context, self.server.infer, "classify", request, "GRPC",
                         _deadline(context))

    def Regress(self, request, context):
        return self._run(context, self.server.infer, "regress", request, "GRPC",
                         _deadline(context))

    def MultiInference(self, request, context):
        return self._run(context, self.server.infer, "multi_inference", request, "GRPC",
                         _deadline(context))

    def GetModelMetadata(self, request, context):
        return self._run(context, self.server.metadata, request)

    def GetModelStatus(self, request, context):
        return self._run(context, self.server.status, request)


class LocalServer:
    """A started server: `.port` (gRPC), `.rest_port` (or None), `.model_server`, `.stop()`."""

    def __init__(self, model_server, grpc_server, port, rest=None):
        self.model_server, self._grpc, self.port, self._rest = model_server, grpc_server, port, rest
        self.rest_port = rest.port if rest is not None else None

    def stop(self, grace=None):
        """Stops serving and unloads every version (threads and memory released)."""
        self._grpc.stop(grace).wait()
        if self._rest is not None:
            self._rest.stop()
        self.model_server.close()

    def wait_for_termination(self):
        self._grpc.wait_for_termination()


def serve(config: model_server_config_pb2.ModelServerConfig, port=8500, host="127.0.0.1",
          batching: Optional[BatchingParameters] = BatchingParameters(),
          max_message_bytes=16 << 20, poll_s=1.0, workers=16, rest_api_port: Optional[int] = None,
          max_num_load_retries=5, load_retry_interval_s=1.0, warmup_iterations=1
          ) -> LocalServer:
    """Starts the server (non-blocking). `port=0` / `rest_api_port=0` pick free ports;
    `rest_api_port=None` runs no REST API; `batching=None` calls the model per request."""
    model_server = ModelServer(config, batching, poll_s, max_num_load_retries,
                               load_retry_interval_s, warmup_iterations)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=workers),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes)])
    services = _GrpcServices(model_server)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        model_server.close()
        raise OSError(f"Could not bind {host}:{port}.")
    server.start()
    rest = None
    if rest_api_port is not None:
        from serving.stand_in.rest import RestServer
        rest = RestServer(model_server, host, rest_api_port, max_message_bytes)
    log.info("serving %s on %s:%d (gRPC)%s", list(model_server.managers), host, bound,
             f", {host}:{rest.port} (REST)" if rest else "")
    return LocalServer(model_server, server, bound, rest)


def read_model_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        text_format.Parse(f.read(), config)
    return config


def single_model_config(name, base_path, num_versions=1
                        ) -> model_server_config_pb2.ModelServerConfig:
    """What `--model_name` / `--model_base_path` mean: one model, its newest `num_versions`
    versions (1, as TF Serving)."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=os.path.abspath(base_path),
                                                model_platform="tensorflow")
    model.model_version_policy.latest.num_versions = num_versions
    return config


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m serving.local_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--rest_api_port", type=int, default=0,
                   help="REST API port (0: none, as TF Serving)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model_name", default="em3")
    p.add_argument("--model_base_path", help="<base>/<version>/saved_model.pb layout")
    p.add_argument("--model_config_file", help="a TF Serving models.config (text proto)")
    p.add_argument("--enable_batching", action=argparse.BooleanOptionalAction, default=True,
                   help="batch concurrent requests (on by default here; off in TF Serving)")
    p.add_argument("--batching_parameters_file", help="TF Serving batching parameters file")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    p.add_argument("--max_num_load_retries", type=int, default=5)
    p.add_argument("--load_retry_interval_micros", type=int, default=1_000_000,
                   help="first wait before a failed load is retried (doubles each time)")
    p.add_argument("--num_request_iterations_for_warmup", type=int, default=1)
    p.add_argument("--max_message_bytes", type=int, default=16 << 20)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if bool(args.model_base_path) == bool(args.model_config_file):
        p.error("give exactly one of --model_base_path and --model_config_file")
    config = (read_model_config(args.model_config_file) if args.model_config_file
              else single_model_config(args.model_name, args.model_base_path))
    batching = None
    if args.enable_batching:
        batching = (BatchingParameters.from_file(args.batching_parameters_file)
                    if args.batching_parameters_file else BatchingParameters())
    server = serve(config, args.port, args.host, batching=batching,
                   max_message_bytes=args.max_message_bytes,
                   poll_s=args.file_system_poll_wait_seconds,
                   rest_api_port=args.rest_api_port or None,
                   max_num_load_retries=args.max_num_load_retries,
                   load_retry_interval_s=args.load_retry_interval_micros / 1e6,
                   warmup_iterations=args.num_request_iterations_for_warmup)
    print(f"local model server listening on {args.host}:{server.port} (gRPC)"
          + (f", {args.host}:{server.rest_port} (REST)" if server.rest_port else ""), flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(1)


if __name__ == "__main__":
    sys.exit(main())
