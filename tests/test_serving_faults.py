"""The local server under faults, as TF Serving 2.16 behaves, through the official stubs only.

A tiny SavedModel (score = sigmoid(w * x) of a tf.Example float feature `x`, with EM3's four
signature kinds and a warm-up file) keeps these tests fast; `tests/test_serving.py` runs the
pushed EM3 model. Versions are pushed as TFX's Pusher does (variables first, saved_model.pb
last) or broken on purpose. Every wait is bounded; tolerances are stated where used.
"""

import base64
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from conftest import rss_mb
from em3_tf._tf import tf
from em3_tf.export import set_method_names
from serving.local_server import serve, single_model_config
from serving.stand_in.batching import Batcher, BatchingParameters
from serving.stand_in.servable import Servable
from serving.stand_in.status import ServingError
from serving.stand_in.versions import parse_version
from tensorflow_serving.apis import (classification_pb2, get_model_status_pb2, inference_pb2,
                                     model_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_log_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


class _Tiny(tf.Module):
    def __init__(self, weight):
        super().__init__()
        self.w = tf.Variable(float(weight))

    def _scores(self, examples):
        x = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([], tf.float32)})["x"]
        return tf.sigmoid(self.w * x)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        return {"scores": self._scores(examples)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self._scores(inputs)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        p = self._scores(inputs)
        classes = tf.tile(tf.constant([["0", "1"]]), [tf.shape(p)[0], 1])
        return {"classes": classes, "scores": tf.stack([1.0 - p, p], axis=1)}


def _example(x=None, **features):
    feature = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
               for k, v in dict(features, **({} if x is None else {"x": x})).items()}
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _save(path, weight, warmup_ok=True):
    """Writes a tiny-model version to `path`: everything first, saved_model.pb last."""
    model = _Tiny(weight)
    tmp = str(path) + ".tmp"
    tf.saved_model.save(model, tmp, signatures={"serving_default": model.serve,
                                                "regress": model.regress,
                                                "classify": model.classify})
    set_method_names(tmp)
    os.makedirs(os.path.join(tmp, "assets.extra"))
    warm = _example(1.0) if warmup_ok else _example(y=1.0)  # no `x`: the warm-up fails
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="tiny"))
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto([warm.SerializeToString()],
                                                             dtype=tf.string))
    with tf.io.TFRecordWriter(os.path.join(tmp, "assets.extra",
                                           "tf_serving_warmup_requests")) as writer:
        writer.write(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    os.rename(tmp, path)
    return str(path)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Saved tiny models to copy in as versions: weights 1, 2, 3 and one with a bad warm-up."""
    root = tmp_path_factory.mktemp("tiny")
    return {"w1": _save(root / "w1", 1.0), "w2": _save(root / "w2", 2.0),
            "w3": _save(root / "w3", 3.0), "bad_warmup": _save(root / "bw", 4.0, False)}


def _push(base, version, source):
    """Copies `source` in as `base/version` the way TFX's Pusher does: saved_model.pb last."""
    target = os.path.join(base, str(version))
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("saved_model.pb"))
    shutil.copy(os.path.join(source, "saved_model.pb"), os.path.join(target, "saved_model.pb"))
    return target


def _push_broken(base, version, source, how):
    target = os.path.join(base, str(version))
    shutil.copytree(source, target)
    if how == "no_variables":
        shutil.rmtree(os.path.join(target, "variables"))
    else:  # truncated variables data
        data = [f for f in os.listdir(os.path.join(target, "variables")) if "data" in f][0]
        with open(os.path.join(target, "variables", data), "r+b") as f:
            f.truncate(3)
    return target


def _wait(condition, timeout_s=30.0, what="condition"):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class _Server:
    """A local server on `base` with fast polling and retries, and stubs to call it."""

    def __init__(self, base, batching=BatchingParameters(max_batch_size=64), rest=False,
                 **kwargs):
        self.base = str(base)
        os.makedirs(self.base, exist_ok=True)
        self.server = serve(single_model_config("tiny", self.base, num_versions=2), port=0,
                            poll_s=0.1,
                            batching=batching, max_num_load_retries=2,
                            load_retry_interval_s=0.05, rest_api_port=0 if rest else None,
                            **kwargs)
        channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(channel)

    def predict(self, xs, name="tiny", timeout=10, **spec):
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, **spec))
        request.inputs["examples"].CopyFrom(tf.make_tensor_proto(
            [_example(float(x)).SerializeToString() for x in xs], dtype=tf.string))
        response = self.predictions.Predict(request, timeout=timeout)
        return tf.make_ndarray(response.outputs["scores"]), response.model_spec.version.value

    def states(self):
        response = self.models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
            model_spec=model_pb2.ModelSpec(name="tiny")), timeout=10)
        return {s.version: s.state for s in response.model_version_status}

    def close(self):
        self.server.stop(0)


@pytest.fixture
def server(tmp_path):
    """A `_Server` on an empty base directory, closed after the test."""
    server = _Server(tmp_path / "base")
    yield server
    server.close()


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def test_version_names_parse_as_tf_serving_does():
    assert parse_version("7") == 7 and parse_version("0007") == 7
    assert parse_version("99999999999999999999") is None  # over int64
    assert parse_version("9223372036854775807") == 2 ** 63 - 1
    assert parse_version("v1") is None and parse_version("1.tmp-export") is None


def test_two_broken_pushes_under_load_keep_the_good_version_serving(versions, server):
    _push(server.base, 1, versions["w1"])
    _wait(lambda: server.states().get(1) == AVAILABLE, what="version 1")
    failures, served, stop = [], [], threading.Event()

    def load():
        end = time.monotonic() + 60
        for _ in range(20000):  # bounded in count and time
            if stop.is_set() or time.monotonic() > end:
                return
            try:
                scores, version = server.predict([0.5, -1.0])
                served.append((version, scores))
            except grpc.RpcError as error:
                failures.append((error.code(), error.details()))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    _push_broken(server.base, 2, versions["w2"], "no_variables")
    _push_broken(server.base, 3, versions["w3"], "truncated")
    _wait(lambda: server.states().get(2) == END and server.states().get(3) == END,
          what="both broken versions to give up")
    time.sleep(0.5)  # the load loop keeps going after the manager gave up
    count_during_faults = len(served)
    # A failed version re-pushed valid is served.
    shutil.rmtree(os.path.join(server.base, "3"))
    _push(server.base, 3, versions["w3"])
    _wait(lambda: served and served[-1][0] == 3, what="the re-pushed version 3")
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert count_during_faults > 20
    assert {v for v, _ in served} <= {1, 3}
    np.testing.assert_allclose(served[-1][1], _sigmoid([1.5, -3.0]), atol=1e-6)
    _wait(lambda: 1 not in server.states(), what="version 1 to be retired")


def test_vanished_versions_are_forgotten_and_recreated_ones_reloaded(versions, server):
    _push(server.base, 1, versions["w1"])
    _push_broken(server.base, 2, versions["w2"], "no_variables")
    _wait(lambda: server.states() == {1: AVAILABLE, 2: END}, what="1 served, 2 failed")
    shutil.rmtree(os.path.join(server.base, "2"))
    _wait(lambda: 2 not in server.states(), what="version 2 to be forgotten")
    _push(server.base, 2, versions["w2"])
    _wait(lambda: server.predict([1.0])[1] == 2, what="version 2 to be served")
    np.testing.assert_allclose(server.predict([1.0])[0], _sigmoid([2.0]), atol=1e-6)


def test_odd_directory_names_and_half_written_versions(versions, tmp_path):
    base = tmp_path / "base"
    os.makedirs(base)
    _push(base, "0005", versions["w2"])  # leading zeros: version 5
    _push(base, "99999999999999999999", versions["w3"])  # not an int64: skipped
    _push(base, "notes", versions["w3"])
    half = _push(base, 9, versions["w3"])
    os.remove(os.path.join(half, "saved_model.pb"))  # a copy still in progress
    server = _Server(base)
    try:
        _wait(lambda: server.states() == {5: AVAILABLE}, what="version 5 only")
        scores, version = server.predict([1.0])
        assert version == 5
        np.testing.assert_allclose(scores, _sigmoid([2.0]), atol=1e-6)
        assert server.predict([1.0], version={"value": 5})[1] == 5
    finally:
        server.close()


def test_a_failing_warmup_fails_the_load(versions, server):
    _push(server.base, 1, versions["w1"])
    _push(server.base, 2, versions["bad_warmup"])
    _wait(lambda: server.states().get(2) == END, what="version 2 to fail its warm-up")
    response = server.models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="tiny", version={"value": 2})), timeout=10)
    assert "Feature: x" in response.model_version_status[0].status.error_message
    assert server.predict([1.0])[1] == 1


def test_oversized_request_is_refused_and_the_server_stays_up(versions, tmp_path):
    """100,000 small examples (~3 MB) against max_batch_size 64: INVALID_ARGUMENT before the
    model runs, memory growth under 300 MB, and the next request is served."""
    server = _Server(tmp_path / "base", max_message_bytes=32 << 20)
    try:
        _push(server.base, 1, versions["w1"])
        _wait(lambda: server.states().get(1) == AVAILABLE, what="version 1")
        before = rss_mb()
        with pytest.raises(grpc.RpcError) as error:
            server.predict(np.ones(100_000), timeout=60)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Task size 100000 is larger than maximum input batch size 64" in \
            error.value.details()
        assert rss_mb() - before < 300
        np.testing.assert_allclose(server.predict([0.0])[0], [0.5], atol=1e-6)
    finally:
        server.close()


def test_retired_versions_stop_their_threads(versions, server):
    _push(server.base, 1, versions["w1"])
    _wait(lambda: server.states().get(1) == AVAILABLE, what="version 1")
    counts = []
    for version in range(2, 8):
        _push(server.base, version, versions["w2" if version % 2 else "w3"])
        _wait(lambda: set(server.states()) == {version - 1, version}
              and server.states()[version] == AVAILABLE, what=f"version {version}")
        if counts:  # the retired version's batch threads are joined after it leaves
            _wait(lambda: threading.active_count() <= counts[0], 10, "threads to stop")
        counts.append(threading.active_count())
    assert counts[-1] <= counts[0], counts  # 2 versions loaded each time, no leftovers


def test_batching_file_fields_left_out_take_tf_serving_defaults(tmp_path):
    """As in TF Serving, a field the batching parameters file leaves out takes TF's batch
    scheduler default (QueueOptions: 1000 examples, no window, 10 enqueued batches; one
    batch thread per core); unknown fields are ignored."""
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 64 }\npad_variable_length_inputs: true\n")
    parameters = BatchingParameters.from_file(str(path))
    assert (parameters.max_batch_size, parameters.batch_timeout_micros,
            parameters.max_enqueued_batches, parameters.num_batch_threads) == (
        64, 0, 10, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count())


def test_batcher_queue_limit_and_deadline():
    """One batch thread, batches of 2 examples, at most 2 queued: a request that waits past
    its deadline is taken out of the queue (DEADLINE_EXCEEDED), a full queue answers
    UNAVAILABLE, an oversized request INVALID_ARGUMENT, and every accepted request gets its
    result."""
    release, entered = threading.Event(), threading.Event()

    def slow(inputs):
        entered.set()
        release.wait(10)
        return {"y": inputs["x"] * 2}

    batcher = Batcher(slow, BatchingParameters(max_batch_size=2, batch_timeout_micros=0,
                                               max_enqueued_batches=2, num_batch_threads=1))
    results, threads = [], []

    def submit():
        thread = threading.Thread(target=lambda: results.append(batcher({"x": np.ones(2)})))
        thread.start()
        threads.append(thread)

    try:
        submit()
        assert entered.wait(5)  # the first batch runs and blocks
        submit()
        _wait(lambda: batcher._queued == 2, 5, "the second request queued")
        with pytest.raises(ServingError) as late:  # queued behind it, then expires
            batcher({"x": np.ones(2)}, deadline=time.monotonic() + 0.2)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert batcher._queued == 2  # taken out of the queue
        submit()
        _wait(lambda: batcher._queued == 4, 5, "a full queue")
        with pytest.raises(ServingError) as full:
            batcher({"x": np.ones(1)})
        assert full.value.code == grpc.StatusCode.UNAVAILABLE and "full" in str(full.value)
        with pytest.raises(ServingError) as big:
            batcher({"x": np.ones(3)})
        assert big.value.code == grpc.StatusCode.INVALID_ARGUMENT
        release.set()
        for thread in threads:
            thread.join(10)
        assert [r["y"].tolist() for r in results] == [[2.0, 2.0]] * 3
    finally:
        release.set()
        batcher.close()


@pytest.fixture(scope="module")
def tiny_server(versions, tmp_path_factory):
    server = _Server(tmp_path_factory.mktemp("codes") / "base", rest=True)
    _push(server.base, 1, versions["w2"])
    _wait(lambda: server.states().get(1) == AVAILABLE, what="version 1")
    yield server
    server.close()


def _predict_request(**spec):
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(**spec))
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(
        [_example(1.0).SerializeToString()], dtype=tf.string))
    return request


STATUS_CASES = {  # TF Serving 2.16's codes (see serving/stand_in/inference.py)
    "unknown_label": (dict(name="tiny", version_label="blue"),
                      grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label"),
    "unknown_signature": (dict(name="tiny", signature_name="nope"),
                          grpc.StatusCode.FAILED_PRECONDITION, 'signature key "nope"'),
    "empty_model_name": (dict(name=""), grpc.StatusCode.INVALID_ARGUMENT, "no name"),
    "unknown_model": (dict(name="other"), grpc.StatusCode.NOT_FOUND, "Latest(other)"),
    "unknown_version": (dict(name="tiny", version={"value": 77}), grpc.StatusCode.NOT_FOUND,
                        "Specific(tiny, 77)"),
}


@pytest.mark.parametrize("case", sorted(STATUS_CASES))
def test_status_codes_match_tf_serving(tiny_server, case):
    spec, code, needle = STATUS_CASES[case]
    with pytest.raises(grpc.RpcError) as error:
        tiny_server.predictions.Predict(_predict_request(**spec), timeout=10)
    assert error.value.code() == code and needle in error.value.details(), error.value.details()
    assert tiny_server.predict([1.0])[1] == 1  # still serving


def test_output_filter_checks(tiny_server):
    request = _predict_request(name="tiny")
    request.output_filter.extend(["scores", "scores"])
    with pytest.raises(grpc.RpcError) as error:
        tiny_server.predictions.Predict(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate output tensor alias: scores" in error.value.details()
    request = _predict_request(name="tiny")
    request.output_filter.append("logits")
    with pytest.raises(grpc.RpcError) as error:
        tiny_server.predictions.Predict(request, timeout=10)
    assert "output tensor alias not found in signature: logits" in error.value.details()


def test_an_input_of_the_wrong_rank_is_refused_by_name(tiny_server):
    request = _predict_request(name="tiny")
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(
        [[_example(1.0).SerializeToString()]], dtype=tf.string))  # [1, 1], not [1]
    with pytest.raises(grpc.RpcError) as error:
        tiny_server.predictions.Predict(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Input 'examples' of signature 'serving_default' must have shape (?), got (1, 1)" in (
        error.value.details()), error.value.details()
    assert tiny_server.predict([1.0])[1] == 1  # still serving


def test_garbage_input_and_a_call_after_unload(versions):
    """Bytes that are no tf.Example: INVALID_ARGUMENT with a readable message (TF cannot
    even decode its own); a call that reaches a version after its unload: UNAVAILABLE, as
    for a request that resolved a retired version."""
    servable = Servable("tiny", 1, versions["w1"])
    call = servable._caller("serving_default")
    with pytest.raises(ServingError) as error:
        call({"examples": np.array([b"\xff\xfe\x00garbage"], dtype=object)})
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a serialized tf.Example" in str(error.value)
    servable.close()
    with pytest.raises(ServingError) as error:
        call({"examples": np.array([_example(1.0).SerializeToString()], dtype=object)})
    assert error.value.code == grpc.StatusCode.UNAVAILABLE and "unloaded" in str(error.value)


def test_no_version_loaded_is_not_found(tmp_path):
    server = _Server(tmp_path / "empty")
    try:
        with pytest.raises(grpc.RpcError) as error:
            server.predict([1.0])
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert "Servable not found for request: Latest(tiny)" in error.value.details()
    finally:
        server.close()


def test_examples_with_context_classify_regress_and_multi_inference(tiny_server):
    """`example_list_with_context` = the flat list with the context merged into every example
    (an example's own value wins); MultiInference runs both signatures on one input."""
    flat = [_example(1.0), _example(-2.0)]
    context_input = {"context": _example(5.0, z=1.0),
                     "examples": [_example(1.0), _example(-2.0)]}
    missing_x = {"context": _example(0.5), "examples": [_example(z=1.0)]}

    def regress(model_input):
        request = regression_pb2.RegressionRequest(
            model_spec=model_pb2.ModelSpec(name="tiny", signature_name="regress"))
        model_input(request.input)
        return [r.value for r in tiny_server.predictions.Regress(request, timeout=10)
                .result.regressions]

    expected = _sigmoid([2.0, -4.0])
    np.testing.assert_allclose(regress(lambda i: i.example_list.examples.extend(flat)),
                               expected, atol=1e-6)
    got = regress(lambda i: (i.example_list_with_context.context.CopyFrom(
        context_input["context"]), i.example_list_with_context.examples.extend(
            context_input["examples"])))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    got = regress(lambda i: (i.example_list_with_context.context.CopyFrom(
        missing_x["context"]), i.example_list_with_context.examples.extend(
            missing_x["examples"])))
    np.testing.assert_allclose(got, _sigmoid([1.0]), atol=1e-6)  # x comes from the context
    classify = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name="tiny", signature_name="classify"))
    classify.input.example_list_with_context.context.CopyFrom(context_input["context"])
    classify.input.example_list_with_context.examples.extend(context_input["examples"])
    result = tiny_server.predictions.Classify(classify, timeout=10).result
    np.testing.assert_allclose([c.classes[1].score for c in result.classifications], expected,
                               atol=1e-6)
    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add(model_spec=model_pb2.ModelSpec(name="tiny", signature_name="regress"),
                    method_name="tensorflow/serving/regress")
    multi.tasks.add(model_spec=model_pb2.ModelSpec(name="tiny", signature_name="classify"),
                    method_name="tensorflow/serving/classify")
    multi.input.example_list.examples.extend(flat)
    results = tiny_server.predictions.MultiInference(multi, timeout=10).results
    np.testing.assert_allclose([r.value for r in results[0].regression_result.regressions],
                               expected, atol=1e-6)
    np.testing.assert_allclose(
        [c.classes[1].score for c in results[1].classification_result.classifications],
        expected, atol=1e-6)
    multi.tasks[1].model_spec.signature_name = "regress"
    with pytest.raises(grpc.RpcError) as error:
        tiny_server.predictions.MultiInference(multi, timeout=10)
    assert "Duplicate evaluation of signature: regress" in error.value.details()


def _http(server, path, body=None):
    url = f"http://127.0.0.1:{server.server.rest_port}{path}"
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
            raw = r.read().decode()
            return r.status, (json.loads(raw) if r.headers["Content-Type"] ==
                              "application/json" else raw)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode())


def test_rest_api_gives_the_grpc_scores(tiny_server):
    xs = [0.25, -1.5, 3.0]
    grpc_scores, _ = tiny_server.predict(xs)
    b64 = [{"b64": base64.b64encode(_example(x).SerializeToString()).decode()} for x in xs]
    status, body = _http(tiny_server, "/v1/models/tiny:predict", {"instances": b64})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], grpc_scores, atol=1e-6)
    status, body = _http(tiny_server, "/v1/models/tiny/versions/1:predict", {"inputs": b64})
    np.testing.assert_allclose(body["outputs"], grpc_scores, atol=1e-6)
    status, body = _http(tiny_server, "/v1/models/tiny:regress", {
        "signature_name": "regress", "context": {"x": 9.0}, "examples": [{"x": x} for x in xs]})
    np.testing.assert_allclose(body["results"], grpc_scores, atol=1e-6)
    status, body = _http(tiny_server, "/v1/models/tiny:classify", {
        "signature_name": "classify", "examples": [{"x": x} for x in xs]})
    np.testing.assert_allclose([r[1][1] for r in body["results"]], grpc_scores, atol=1e-6)
    status, body = _http(tiny_server, "/v1/models/tiny")
    assert body["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = _http(tiny_server, "/v1/models/tiny/metadata")
    assert "serving_default" in body["metadata"]["signature_def"]["signature_def"]
    status, body = _http(tiny_server, "/v1/models/tiny/labels/blue:predict", {"instances": b64})
    assert status == 400 and "Unrecognized servable version label" in body["error"]
    status, body = _http(tiny_server, "/v1/models/nope:predict", {"instances": b64})
    assert status == 404 and "error" in body
    status, text = _http(tiny_server, "/monitoring/prometheus/metrics")
    assert status == 200
    assert ':tensorflow:serving:request_count{model_name="tiny",status="OK"}' in text
    assert 'entrypoint="REST"' in text and 'entrypoint="GRPC"' in text
