"""TensorFlow and TensorFlow Serving protos without importing TensorFlow.

The official `tensorflow_serving.apis` modules import `tensorflow.core...` protos, and any
`tensorflow.*` import first runs `tensorflow/__init__.py`: several seconds and about a
gigabyte of memory, which a ranking client does not need. `load` imports the generated
`_pb2` modules with a bare stand-in for the `tensorflow` package (so only the protos load)
and removes the stand-in afterwards; a later `import tensorflow` is the real one and reuses
the same proto modules. When TensorFlow is already imported, they are imported normally.

`tensor_proto` and `to_ndarray` are the two `tf.make_tensor_proto` / `tf.make_ndarray`
cases a client needs.
"""

import importlib
import importlib.util
import sys
import threading
import types
from typing import Sequence

import numpy as np

_MODULES = {
    "predict_pb2": "tensorflow_serving.apis.predict_pb2",
    "input_pb2": "tensorflow_serving.apis.input_pb2",
    "model_pb2": "tensorflow_serving.apis.model_pb2",
    "get_model_metadata_pb2": "tensorflow_serving.apis.get_model_metadata_pb2",
    "get_model_status_pb2": "tensorflow_serving.apis.get_model_status_pb2",
    "prediction_service_pb2_grpc": "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "model_service_pb2_grpc": "tensorflow_serving.apis.model_service_pb2_grpc",
    "example_pb2": "tensorflow.core.example.example_pb2",
    "tensor_pb2": "tensorflow.core.framework.tensor_pb2",
    "types_pb2": "tensorflow.core.framework.types_pb2",
}


_LOCK = threading.Lock()
_LOADED = None


def load() -> types.SimpleNamespace:
    """The proto modules above as attributes (`protos.load().predict_pb2`, ...); loaded once
    per process."""
    global _LOADED
    if _LOADED is not None:  # assigned once: no lock needed to read it
        return _LOADED
    with _LOCK:
        if _LOADED is None:
            _LOADED = _import_protos()
        return _LOADED


def _import_protos() -> types.SimpleNamespace:
    stub = None
    if "tensorflow" not in sys.modules:
        spec = importlib.util.find_spec("tensorflow")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("The TensorFlow protos ship in the `tensorflow` package, which "
                              "is not installed.")
        stub = types.ModuleType("tensorflow")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["tensorflow"] = stub
    try:
        return types.SimpleNamespace(**{name: importlib.import_module(module)
                                        for name, module in _MODULES.items()})
    finally:
        if stub is not None and sys.modules.get("tensorflow") is stub:
            del sys.modules["tensorflow"]


def tensor_proto(values: Sequence[bytes]):
    """A 1-D `DT_STRING` TensorProto of `values` (e.g. serialized tf.Examples)."""
    p = load()
    proto = p.tensor_pb2.TensorProto(dtype=p.types_pb2.DT_STRING, string_val=list(values))
    proto.tensor_shape.dim.add(size=len(values))
    return proto


_NUMERIC = {  # TensorProto dtype -> (NumPy dtype, repeated field used when no tensor_content)
    "DT_FLOAT": (np.float32, "float_val"), "DT_DOUBLE": (np.float64, "double_val"),
    "DT_INT32": (np.int32, "int_val"), "DT_INT64": (np.int64, "int64_val"),
    "DT_BOOL": (np.bool_, "bool_val")}


def to_ndarray(proto) -> np.ndarray:
    """The NumPy array of a TensorProto of a numeric, bool or string dtype."""
    p = load()
    shape = [d.size for d in proto.tensor_shape.dim]
    name = p.types_pb2.DataType.Name(proto.dtype)
    if name == "DT_STRING":
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    if name not in _NUMERIC:
        raise ValueError(f"to_ndarray: unsupported TensorProto dtype {name}.")
    dtype, field = _NUMERIC[name]
    if proto.tensor_content:
        values = np.frombuffer(proto.tensor_content, dtype=dtype)
    else:
        values = np.asarray(getattr(proto, field), dtype=dtype)
        size = int(np.prod(shape)) if shape else 1
        if values.size == 1 and size > 1:  # TF Serving may send one repeated value
            values = np.repeat(values, size)
    return values.reshape(shape)
