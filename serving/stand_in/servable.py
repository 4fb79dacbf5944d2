"""`Servable`: one loaded model version (its SavedModel, signature defs and batchers).

A version becomes a servable only when all of this succeeded: the SavedModel loads, its
`saved_model.pb` parses, and the warm-up requests of
`assets.extra/tf_serving_warmup_requests` (a TFRecord of `PredictionLog`s, at most 1,000,
each replayed `warmup_iterations` times) all run, as TF Serving does before it marks a
version AVAILABLE. Like TF Serving, it holds the SavedModel's `serve` MetaGraph in a session
and runs a signature as one session run that feeds and fetches the signature's tensor names.
`close()` stops its batch threads and closes the session, so a retired version holds no
memory.
"""

import contextlib
import ctypes
import gc
import os
import threading
import time
from typing import Dict, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.stand_in.batching import Batcher, BatchingParameters
from serving.stand_in.status import ServingError, invalid

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


class Servable:
    """One loaded version of model `name`.

    Args:
      name, version, path: the model name, version number and version directory.
      batching: `BatchingParameters`, or None to call the model once per request.
      warmup_iterations: replays of each warm-up record before the version is served.
    """

    def __init__(self, name: str, version: int, path: str,
                 batching: Optional[BatchingParameters] = None, warmup_iterations: int = 1):
        self.name, self.version, self.path = name, version, path
        self._inflight = 0
        self._idle = threading.Condition()
        self._batchers, self._functions = {}, None
        self._session, meta_graph = _load_session(path)
        self.signature_defs = {k: v for k, v in meta_graph.signature_def.items()
                               if not k.startswith("__")}
        try:
            self._functions = {key: _signature_runner(self._session, definition)
                               for key, definition in self.signature_defs.items()}
            self._batchers = ({key: Batcher(self._caller(key), batching)
                               for key in self._functions} if batching else {})
            self._warm_up(warmup_iterations)
        except Exception:
            self.close()
            raise

    def _caller(self, key, functions=None):
        function = (functions or self._functions)[key]

        def call(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
            try:
                return function(inputs)
            except tf.errors.InvalidArgumentError as error:
                raise invalid(error.message) from None
            except UnicodeDecodeError:  # TF could not even format its message: garbage bytes
                raise invalid("Could not parse example input: not a serialized "
                              "tf.Example") from None
            except (tf.errors.CancelledError, RuntimeError):  # closed after close()'s wait
                raise ServingError(grpc.StatusCode.UNAVAILABLE, f"Servable {self.name} "
                                   f"version {self.version} was unloaded") from None
            except Exception as error:  # noqa: BLE001
                raise ServingError(grpc.StatusCode.INTERNAL, str(error)) from None
        return call

    def run(self, key: str, inputs: Dict[str, np.ndarray], deadline: Optional[float] = None):
        """Runs signature `key` (checked by the caller) on `inputs`, batched if configured."""
        functions, batchers = self._functions, self._batchers  # close() may swap them
        if functions is None:
            raise ServingError(grpc.StatusCode.UNAVAILABLE,
                               f"Servable {self.name} version {self.version} was unloaded")
        if key in batchers:
            return batchers[key](inputs, deadline)
        return self._caller(key, functions)(inputs)

    def in_use(self):
        """Marks a request in flight at once (call it where the version was resolved) and
        returns a context manager that ends it; `close()` waits for every one of them."""
        with self._idle:
            self._inflight += 1
        return self._until_done()

    @contextlib.contextmanager
    def _until_done(self):
        try:
            yield self
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _warm_up(self, iterations):
        from serving.stand_in import inference  # the request handlers replay the logs
        path = os.path.join(self.path, WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return
        records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        if len(records) > MAX_WARMUP_RECORDS:
            raise invalid(f"Number of warmup records exceeds the maximum "
                          f"({MAX_WARMUP_RECORDS}) at {path}")
        for record in records:
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(record)
            except Exception as error:  # noqa: BLE001
                raise invalid(f"Failed to parse warmup record: {error} from {path}") from None
            kind = log.WhichOneof("log_type")
            handler = {"predict_log": inference.predict, "classify_log": inference.classify,
                       "regress_log": inference.regress,
                       "multi_inference_log": inference.multi_inference}.get(kind)
            if handler is None:
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"Unsupported log_type for warmup: {kind}")
            request = getattr(log, kind).request
            for _ in range(iterations):
                handler(self, request)

    def close(self, timeout_s=60.0):
        """Waits for the requests in flight, stops the batch threads and frees the model."""
        end = time.monotonic() + timeout_s
        with self._idle:
            while self._inflight and time.monotonic() < end:
                self._idle.wait(max(0.0, end - time.monotonic()))
        for batcher in self._batchers.values():
            batcher.close()
        session, self._session = self._session, None
        self._batchers, self._functions = {}, None
        if session is not None:
            session.close()
            del session  # the session is deleted with its last reference, before the trim
        gc.collect()
        _release_free_memory()


def _load_session(path: str):
    """`(session, meta_graph_def)`: the SavedModel's `serve` MetaGraph in a session of its
    own, variables restored and the init op (table initializers) run: how TF Serving's
    `LoadSavedModel` holds a version, rather than a TF2 object graph whose signatures are
    called eagerly."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(
                session, [tf.saved_model.SERVING], path)
    except Exception:
        session.close()
        raise
    graph.finalize()
    return session, meta_graph


def _drop_loader_deprecation(record) -> bool:
    """A `logging` filter: TF's notice that the TF1 loader is deprecated (TF Serving loads
    this way, so it says nothing to a server's user); every other record passes."""
    return "loader_impl) is deprecated" not in record.getMessage()


tf.get_logger().addFilter(_drop_loader_deprecation)


def _signature_runner(session, definition):
    """`inputs -> outputs` (NumPy dicts keyed by signature alias) of one SignatureDef, as one
    `Session::Run` feeding and fetching the signature's tensor names, like TF Serving."""
    names, aliases = sorted(definition.inputs), sorted(definition.outputs)
    tensor = session.graph.get_tensor_by_name  # a name the graph lacks fails the load
    run = session.make_callable([tensor(definition.outputs[a].name) for a in aliases],
                                [tensor(definition.inputs[n].name) for n in names])

    def call(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return dict(zip(aliases, run(*[inputs[n] for n in names])))
    return call


def _release_free_memory():
    """Hands freed heap pages back to the OS (glibc keeps them otherwise, and a server that
    swaps versions all day would look like it leaks)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
