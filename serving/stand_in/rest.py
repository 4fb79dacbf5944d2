"""TF Serving's REST API and Prometheus endpoint, over the same `ModelServer` as gRPC.

    POST /v1/models/<name>[/versions/<N>|/labels/<L>]:predict    {"instances": [...]} or {"inputs": ...}
    POST /v1/models/<name>[/versions/<N>|/labels/<L>]:classify   {"examples": [...], "context": {...}}
    POST /v1/models/<name>[/versions/<N>|/labels/<L>]:regress    (as classify)
    GET  /v1/models/<name>[/versions/<N>|/labels/<L>]            model status
    GET  /v1/models/<name>[/versions/<N>|/labels/<L>]/metadata   signature defs
    GET  /monitoring/prometheus/metrics

Request and response bodies are TF Serving's JSON formats: row (`instances` -> `predictions`)
and columnar (`inputs` -> `outputs`) Predict, binary strings as `{"b64": "..."}`, Classify /
Regress `examples` (+ `context`) -> `results`. Errors are `{"error": "..."}` with TF Serving's
HTTP status for the gRPC code.
"""

import base64
import http.server
import json
import re
import threading
import urllib.parse
from typing import Any, Dict

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, predict_pb2,
                                     regression_pb2)

from serving.stand_in.inference import DEFAULT_SIGNATURE
from serving.stand_in.status import ServingError, invalid

_MODEL = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
POST_ROUTE = re.compile(rf"(?i){_MODEL}:(classify|regress|predict)")
GET_ROUTE = re.compile(rf"(?i){_MODEL}(?:/(metadata))?")
METRICS_PATH = "/monitoring/prometheus/metrics"


def _spec(name, version, label, signature_name="") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name), signature_name=signature_name)
    if version is not None:
        spec.version.value = int(version)
    elif label is not None:
        spec.version_label = urllib.parse.unquote(label)
    return spec


def _decode(value):
    """JSON value -> Python value with `{"b64": ...}` objects as bytes."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise invalid("Unable to base64 decode") from None
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _tensor(value, dtype):
    try:
        if dtype == tf.string:
            array = np.array(value, dtype=object)
            array = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(),
                                 otypes=[object])(array) if array.size else array
            return tf.make_tensor_proto(array, dtype=tf.string)
        return tf.make_tensor_proto(np.array(value, dtype=dtype.as_numpy_dtype))
    except (ValueError, TypeError) as error:
        raise invalid(f"Could not convert the JSON input to a {dtype.name} tensor: "
                      f"{error}") from None


def _predict_request(body: Dict[str, Any], spec: model_pb2.ModelSpec):
    """`(request, prepare, row_format)`: the Predict request, the function that fills its
    inputs once the servable's signature is known (`ModelServer.infer(prepare=...)`), and
    whether the body used the row (`instances`) format."""
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid("'signature_name' key must be a string value.")
    spec.signature_name = signature
    if ("instances" in body) == ("inputs" in body):
        raise invalid("Missing 'inputs' or 'instances' key" if "instances" not in body else
                      "Only one of 'inputs' or 'instances' may be given.")
    row_format = "instances" in body
    data = _decode(body["instances" if row_format else "inputs"])

    def prepare(servable, request):
        key = spec.signature_name or DEFAULT_SIGNATURE
        if key not in servable.signature_defs:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        inputs = servable.signature_defs[key].inputs
        names = sorted(inputs)
        if row_format:
            if not isinstance(data, list) or not data:
                raise invalid("'instances' must be a non-empty list.")
            if len(names) == 1 and not (isinstance(data[0], dict) and set(data[0]) == set(names)):
                columns = {names[0]: data}
            else:
                if any(not isinstance(r, dict) or set(r) != set(names) for r in data):
                    raise invalid(f"Every instance must be an object with exactly the keys "
                                  f"{names}.")
                columns = {n: [r[n] for r in data] for n in names}
        else:
            columns = (data if isinstance(data, dict) and set(data) == set(names)
                       else {names[0]: data} if len(names) == 1 else None)
            if columns is None:
                raise invalid(f"'inputs' must be an object with the keys {names}.")
        for name, value in columns.items():
            request.inputs[name].CopyFrom(_tensor(value, tf.dtypes.as_dtype(inputs[name].dtype)))
        return request

    return predict_pb2.PredictRequest(model_spec=spec), prepare, row_format


def _json_value(alias, array: np.ndarray):
    if array.dtype.kind in "SO":
        if alias.endswith("_bytes"):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()},
                                otypes=[object])(array).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(
            array).tolist()
    return array.tolist()


def _predict_body(response: predict_pb2.PredictResponse, row_format) -> Dict:
    outputs = {k: _json_value(k, tf.make_ndarray(v)) for k, v in response.outputs.items()}
    if not row_format:
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values()))}
    n = len(next(iter(outputs.values())))
    return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(n)]}


def _feature(value) -> tf.train.Feature:
    values = value if isinstance(value, list) else [value]
    if all(isinstance(v, (bool, int)) for v in values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    if all(isinstance(v, (bool, int, float)) for v in values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))
    if all(isinstance(v, (str, bytes)) for v in values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v if isinstance(v, bytes) else v.encode() for v in values]))
    raise invalid(f"Unsupported feature value in JSON example: {value!r}")


def _example(row) -> tf.train.Example:
    if not isinstance(row, dict):
        raise invalid(f"An example must be a JSON object of features, got {row!r}.")
    return tf.train.Example(features=tf.train.Features(
        feature={k: _feature(v) for k, v in row.items()}))


def _examples_request(body, spec, method):
    if not isinstance(body.get("examples"), list):
        raise invalid(f"JSON Value: {json.dumps(body)[:200]} When method is {method}, key "
                      f"'examples' is expected and was not found")
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid("'signature_name' key must be a string value.")
    spec.signature_name = signature
    request = (classification_pb2.ClassificationRequest if method == "classify"
               else regression_pb2.RegressionRequest)(model_spec=spec)
    examples = [_example(_decode(r)) for r in body["examples"]]
    if "context" in body:
        listed = request.input.example_list_with_context
        listed.context.CopyFrom(_example(_decode(body["context"])))
    else:
        listed = request.input.example_list
    listed.examples.extend(examples)
    return request


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "em3-local-server"
    model_server = None  # set per server class

    def log_message(self, *args):  # no per-request lines on stderr
        pass

    def _send(self, status, body, content_type="application/json"):
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, error: Exception):
        """Answers `error` in TF Serving's JSON; anything but a `ServingError` is UNKNOWN."""
        if not isinstance(error, ServingError):
            error = ServingError(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")
        self._send(error.http_status, {"error": str(error)})

    def do_GET(self):
        path = urllib.parse.urlparse(self.path).path
        try:
            if path == METRICS_PATH:
                return self._send(200, self.model_server.metrics.prometheus(), "text/plain")
            match = GET_ROUTE.fullmatch(path)
            if match is None:
                raise invalid(f"Malformed request: GET {path}")
            name, version, label, metadata = match.groups()
            spec = _spec(name, version, label)
            if metadata:
                response = self.model_server.metadata(
                    get_model_metadata_pb2.GetModelMetadataRequest(
                        model_spec=spec, metadata_field=["signature_def"]))
                signatures = get_model_metadata_pb2.SignatureDefMap()
                response.metadata["signature_def"].Unpack(signatures)
                return self._send(200, {
                    "model_spec": json_format.MessageToDict(
                        response.model_spec, preserving_proto_field_name=True),
                    "metadata": {"signature_def": json_format.MessageToDict(
                        signatures, preserving_proto_field_name=True)}})
            response = self.model_server.status(
                get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
            self._send(200, json_format.MessageToDict(
                response, preserving_proto_field_name=True, including_default_value_fields=True))
        except Exception as error:  # noqa: BLE001 - answer, and keep serving
            self._fail(error)

    def do_POST(self):
        path = urllib.parse.urlparse(self.path).path
        try:
            match = POST_ROUTE.fullmatch(path)
            if match is None:
                raise invalid(f"Malformed request: POST {path}")
            name, version, label, method = match.groups()
            method = method.lower()
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise invalid("Malformed Content-Length header") from None
            if length > self.server.max_body_bytes:
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"Request body of {length} bytes exceeds the limit of "
                                   f"{self.server.max_body_bytes}")
            raw = self.rfile.read(length)
            if not raw.strip():
                raise invalid("JSON Parse error: The document is empty")
            try:
                body = json.loads(raw)
            except ValueError as error:
                raise invalid(f"JSON Parse error: {error}") from None
            if not isinstance(body, dict):
                raise invalid("JSON Parse error: the request body must be a JSON object")
            spec = _spec(name, version, label)
            if method == "predict":
                request, prepare, row_format = _predict_request(body, spec)
                response = self.model_server.infer("predict", request, "REST", prepare=prepare)
                return self._send(200, _predict_body(response, row_format))
            request = _examples_request(body, spec, method)
            response = self.model_server.infer(method, request, "REST")
            if method == "classify":
                results = [[[c.label, c.score] for c in row.classes]
                           for row in response.result.classifications]
            else:
                results = [r.value for r in response.result.regressions]
            self._send(200, {"results": results})
        except Exception as error:  # noqa: BLE001 - answer, and keep serving
            self._fail(error)


class RestServer:
    """Serves `model_server` over HTTP on `host:port` (0: a free port) in a background thread."""

    def __init__(self, model_server, host="127.0.0.1", port=8501, max_body_bytes=16 << 20):
        handler = type("Handler", (_Handler,), {"model_server": model_server})
        self._httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._httpd.max_body_bytes = max_body_bytes
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="rest")
        self._thread.start()

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)
