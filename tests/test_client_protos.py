"""The client builds TF Serving requests without TensorFlow, and the light proto helpers
agree with TensorFlow's own."""

import os
import subprocess
import sys

import numpy as np
import pytest

from em3_tf import protos
from em3_tf._tf import tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_client_imports_and_builds_requests_without_tensorflow():
    code = """
import sys
from serving import client
user = {"user_id": 3, "history_item_ids": [5, 6], "history_labels": [1, 0],
        "history_ratings": [4, 2], "history_seconds_ago": [10, 20]}
context, items = client.context_request(user, [7, 8])
flat = client.F.to_examples(client.user_rows(user, [7, 8]))
heavy = sorted(m for m in ("tensorflow", "tensorflow.python", "tensorflow_recommenders",
                           "tf_keras") if m in sys.modules)
import tensorflow as tf  # the real one still imports afterwards, and reads our protos
parsed = tf.io.parse_single_example(items[0], {"item_id": tf.io.FixedLenFeature([], tf.int64)})
assert int(parsed["item_id"]) == 7
print(len(context), len(items), len(flat), heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "[]", f"TensorFlow was imported: {out.stdout}"
    assert out.stdout.split()[1:3] == ["2", "2"]


@pytest.mark.parametrize("values", [np.array([0.25, -1.5, 3.0], np.float32),
                                    np.array([[7, -2]], np.int64),
                                    np.array([True, False]),
                                    np.array([0.5, 2.0], np.float64)])
def test_to_ndarray_reads_what_tensorflow_writes(values):
    proto = tf.make_tensor_proto(values)  # tensor_content form
    np.testing.assert_array_equal(protos.to_ndarray(proto), tf.make_ndarray(proto))
    short = tf.make_tensor_proto(values.ravel()[0], shape=values.shape)  # one repeated value
    np.testing.assert_array_equal(protos.to_ndarray(short), tf.make_ndarray(short))


def test_string_tensor_proto_equals_tensorflows():
    values = [b"a", b"\x00bc"]
    ours = protos.tensor_proto(values)
    assert ours == tf.make_tensor_proto(values, dtype=tf.string)
    assert list(protos.to_ndarray(ours)) == values
    with pytest.raises(ValueError, match="unsupported TensorProto dtype DT_HALF"):
        protos.to_ndarray(tf.make_tensor_proto(np.ones(2, np.float16)))
