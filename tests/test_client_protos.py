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
listed = client.protos.load().input_pb2.ExampleListWithContext.FromString(
    client.context_request(user, [7, 8]))
flat = client.F.to_examples(client.user_rows(user, [7, 8]))
heavy = sorted(m for m in ("tensorflow", "tensorflow.python", "tensorflow_recommenders",
                           "tf_keras") if m in sys.modules)
import tensorflow as tf  # the real one still imports afterwards, and reads our protos
parsed = tf.io.parse_single_example(listed.examples[0].SerializeToString(),
                                    {"item_id": tf.io.FixedLenFeature([], tf.int64)})
assert int(parsed["item_id"]) == 7
assert "item_id" not in listed.context.features.feature
print(len(listed.examples), len(flat), heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "[]", f"TensorFlow was imported: {out.stdout}"
    assert out.stdout.split()[:2] == ["2", "2"]


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


@pytest.mark.parametrize("string_ids", [False, True])
def test_to_examples_shares_the_users_side_and_parses_to_each_rows_features(string_ids):
    """`to_examples` serializes the features every row shares once (concatenated messages
    parse as their merge): each row must still parse, in TensorFlow's parser and in
    Python's, to exactly its own features, including rows that differ in a column that is
    shared elsewhere and a row whose history is shorter."""
    from em3_tf import features as F
    ids = (lambda xs: [f"i{x}" for x in xs]) if string_ids else (lambda xs: list(xs))
    pad = F.PAD_STRING if string_ids else F.PAD_ID
    rows = {F.USER_ID: np.array(ids([3, 3, 3, 4]), object if string_ids else np.int64),
            F.ITEM_ID: np.array(ids([7, 8, 9, 7]), object if string_ids else np.int64),
            F.USER_COUNT: np.array([2, 2, 2, 1]), F.USER_POSITIVES: np.array([1, 1, 1, 0]),
            F.HISTORY: np.array([ids([5, 6])] * 3 + [ids([5]) + [pad]],
                                object if string_ids else np.int64),
            F.HISTORY_LABELS: np.array([[1, 0]] * 3 + [[1, -1]]),
            F.HISTORY_RATINGS: np.array([[4, 2]] * 3 + [[4, -1]]),
            F.HISTORY_SECONDS: np.array([[10, 20]] * 3 + [[10, -1]])}
    for same_user in (slice(0, 3), slice(0, 4)):  # all rows share the user's side, or not
        part = {k: v[same_user] for k, v in rows.items()}
        serialized = F.to_examples(part)
        for row, record in enumerate(serialized):
            expected = tf.train.Example()
            for name, values in part.items():
                values = np.atleast_1d(values[row])
                values = values[values != (pad if name == F.HISTORY else -1)] \
                    if name in F.SEQUENCES else values
                feature = expected.features.feature[name]
                if values.dtype.kind in "OU":
                    feature.bytes_list.value.extend(v.encode() for v in values)
                else:
                    feature.int64_list.value.extend(int(v) for v in values)
            assert tf.train.Example.FromString(record) == expected, (same_user, row)
        spec = F.example_spec(with_label=False, string_ids=string_ids)
        parsed = tf.io.parse_example(tf.constant(serialized), spec)
        np.testing.assert_array_equal(parsed[F.ITEM_ID].numpy().astype(str),
                                      np.asarray(part[F.ITEM_ID]).astype(str))
        assert parsed[F.HISTORY].row_lengths().numpy().tolist() == \
            [2] * 3 + [1] * (len(serialized) - 3)


@pytest.mark.parametrize("values", [np.array([0.25, -1.5], np.float32),
                                    np.array([[True, False], [False, True]]).T,  # strided
                                    np.array(3, np.int64), np.array([1, 2], np.int32),
                                    np.zeros([2, 0], np.float32),
                                    np.array([b"a", b"bc"], dtype=object)])
def test_stand_in_response_tensors_read_back_as_the_outputs(values):
    """The stand-in writes numeric and bool outputs straight into `tensor_content`: TF's
    reader and the client's must both give back the array, its dtype and shape."""
    from serving.stand_in.inference import _tensor_proto
    proto = _tensor_proto(values)
    for read in (tf.make_ndarray, protos.to_ndarray):
        back = read(proto)
        assert back.shape == values.shape and (values.dtype == object or
                                               back.dtype == values.dtype)
        np.testing.assert_array_equal(back, values)


@pytest.mark.parametrize("string_ids", [False, True])
def test_context_request_is_the_example_list_the_proto_api_builds(string_ids):
    """`context_request` writes the list as concatenated single-candidate lists plus a
    context-only list; it must be byte for byte the message built field by field: the user's
    features once as context, then one item_id-only tf.Example per candidate, in order."""
    from em3_tf import interface as F
    from serving import client
    cast = str if string_ids else int
    user = {F.USER_ID: cast(3), "user_gender": cast(1), F.HISTORY: [cast(5), cast(6)],
            F.HISTORY_LABELS: [1, 0], F.HISTORY_RATINGS: [4, 2], F.HISTORY_SECONDS: [10, 20]}
    candidates = ([cast(c) for c in (9, 7, 8)] + [np.str_("12")] if string_ids
                  else [9, -7, np.int64(2**63 - 1), np.int32(8)])
    rows = client.user_rows(user, candidates[:1])
    rows.pop(F.ITEM_ID)
    expected = protos.load().input_pb2.ExampleListWithContext()
    expected.context.ParseFromString(F.to_examples(rows)[0])
    for c in candidates:
        expected.examples.add().ParseFromString(F.example({F.ITEM_ID: [c]}))
    assert client.context_request(user, candidates) == expected.SerializeToString()
    parsed = protos.load().input_pb2.ExampleListWithContext.FromString(
        client.context_request(user, candidates))
    kind = "bytes_list" if string_ids else "int64_list"
    got = [getattr(e.features.feature[F.ITEM_ID], kind).value[0] for e in parsed.examples]
    assert got == [c.encode() if string_ids else int(c) for c in candidates]
    with pytest.raises(ValueError, match="`candidates` is empty"):
        client.context_request(user, [])
