"""Serving through TF Serving's gRPC API, official stubs only, against the pipeline's push.

Every test runs against the local stand-in server; when `tensorflow_model_server` is on PATH
the same tests run against it too, otherwise those cases are skipped with that reason.
"""

import os
import shutil
import socket
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest

from conftest import keras_scorer, rss_mb
from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.data import records
from serving.client import EM3Client, ServingClientError, user_rows
from serving.local_server import serve, single_model_config
from tensorflow_serving.apis import (classification_pb2, model_pb2, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

BINARY = shutil.which("tensorflow_model_server")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_copy(pushed_pipeline, tmp_path_factory):
    """A private copy of the pushed base directory (tests push new versions into it)."""
    summary, config = pushed_pipeline
    base = tmp_path_factory.mktemp("served") / "em3"
    shutil.copytree(config.push_base, base)
    return str(base)


@pytest.fixture(scope="module", params=["local", "tensorflow_model_server"])
def server(request, served_copy):
    if request.param == "local":
        srv = serve(single_model_config("em3", served_copy), port=0, poll_s=0.2,
                    max_message_bytes=4 << 20)
        yield f"127.0.0.1:{srv.port}"
        srv.stop(0)
        return
    if BINARY is None:
        pytest.skip("tensorflow_model_server is not on PATH (not installable here); the "
                    "local stand-in server ran these tests")
    port = _free_port()
    proc = subprocess.Popen([BINARY, f"--port={port}", "--model_name=em3",
                             f"--model_base_path={served_copy}",
                             "--file_system_poll_wait_seconds=1", "--rest_api_port=0",
                             "--grpc_channel_arguments=grpc.max_receive_message_length=4194304"])
    target = f"127.0.0.1:{port}"
    EM3Client(target, timeout_s=60, retries=8, backoff_s=0.5).status()
    yield target
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def request_rows(pushed_pipeline):
    _, config = pushed_pipeline
    test = records.read_split(config.data_dir, config.protocol, "test")
    return test


def _user_and_candidates(test, row=0, n=20):
    """The stored test example `row`'s user (history with feedback, statistics) and `n`
    distinct test items as candidates."""
    valid = test[F.HISTORY][row] != F.PAD_ID
    user = {name: [int(v) for v in test[name][row][valid]] for name in F.SEQUENCES}
    user.update({name: int(test[name][row]) for name in (F.USER_ID,) + F.USER_STATISTICS})
    return user, list(dict.fromkeys(int(i) for i in test[F.ITEM_ID]))[:n]


def _stored_rows(test, row, candidates):
    """Raw feature rows of stored example `row` with its item replaced by each candidate."""
    n = len(candidates)
    rows = {name: np.repeat(test[name][row:row + 1], n, axis=0)
            for name in F.raw_features() if name in test}
    rows[F.ITEM_ID] = np.array(candidates)
    return rows


def test_scores_with_feedback_equal_the_keras_model(server, pushed_pipeline, request_rows):
    """Client (history with feedback) -> served model == Keras model on the stored features,
    tolerance 1e-5; and the feedback matters: flipping the history's labels moves scores."""
    summary, config = pushed_pipeline
    score = keras_scorer(summary, config)
    row = int(np.flatnonzero((request_rows[F.HISTORY] != F.PAD_ID).sum(1) >= 5)[0])
    user, candidates = _user_and_candidates(request_rows, row=row)
    with EM3Client(server) as client:
        ranked = dict(client.rank(user, candidates))
        flipped = dict(client.rank(
            dict(user, **{F.HISTORY_LABELS: [1 - v for v in user[F.HISTORY_LABELS]]}),
            candidates))
    expected = score(_stored_rows(request_rows, row, candidates))
    served = np.array([ranked[c] for c in candidates])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert np.abs(served - np.array([flipped[c] for c in candidates])).max() > 1e-4
    order = [item for item, _ in EM3Client(server).rank(user, candidates)]
    assert sorted(order) == sorted(candidates)
    assert [ranked[i] for i in order] == sorted(ranked.values(), reverse=True)


def test_example_list_with_context_gives_the_flat_scores(server, request_rows):
    """`rank` as one ExampleListWithContext (the default) == one tf.Example per candidate,
    tolerance 1e-5, for a user with a history and one without."""
    row = int(np.flatnonzero((request_rows[F.HISTORY] != F.PAD_ID).sum(1) >= 5)[0])
    user, candidates = _user_and_candidates(request_rows, row=row, n=30)
    newcomer = dict(user, **{name: [] for name in F.SEQUENCES})
    for user in (user, newcomer):
        with EM3Client(server, request_format="flat") as flat, EM3Client(server) as listed:
            expected = dict(flat.rank(user, candidates))
            got = dict(listed.rank(user, candidates))
        assert listed.request_format == "context"
        np.testing.assert_allclose([got[c] for c in candidates],
                                   [expected[c] for c in candidates], atol=1e-5)


def test_cold_items_are_scored_from_their_content(server, request_rows):
    test = request_rows
    cold = np.unique(test[F.ITEM_ID][test["is_cold_item"] == 1])[:20]
    user, _ = _user_and_candidates(test, row=3)
    with EM3Client(server) as client:
        scores = np.array([s for _, s in client.rank(user, [int(i) for i in cold])])
    # Every cold item shares the ID model's OOV bucket: differences come from content alone.
    assert np.all((scores > 0) & (scores < 1))
    assert scores.std() > 1e-3


def test_metadata_and_status(server):
    with EM3Client(server) as client:
        metadata = client.metadata()
        status = client.status()
    default = metadata["signatures"]["serving_default"]
    assert default["inputs"] == {"examples": "string"}
    assert default["outputs"] == {"scores": "float32", "in_catalog": "bool"}
    assert metadata["signatures"]["regress"]["method"] == "tensorflow/serving/regress"
    assert any(s["state"] == "AVAILABLE" for s in status)


def test_classify_and_regress(server, request_rows):
    user, candidates = _user_and_candidates(request_rows, n=4)
    rows = user_rows(user, candidates)
    examples = [tf.train.Example.FromString(s) for s in F.to_examples(rows)]
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server))
    regress = regression_pb2.RegressionRequest(
        model_spec=model_pb2.ModelSpec(name="em3", signature_name="regress"))
    regress.input.example_list.examples.extend(examples)
    values = [r.value for r in stub.Regress(regress, timeout=10).result.regressions]
    classify = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name="em3", signature_name="classify"))
    classify.input.example_list.examples.extend(examples)
    result = stub.Classify(classify, timeout=10).result.classifications
    np.testing.assert_allclose([c.classes[1].score for c in result], values, atol=1e-6)
    scores = dict(EM3Client(server).rank(user, candidates))
    np.testing.assert_allclose(values, [scores[c] for c in candidates], atol=1e-6)
    wrong = regression_pb2.RegressionRequest(model_spec=model_pb2.ModelSpec(name="em3"))
    wrong.input.example_list.examples.extend(examples)
    with pytest.raises(grpc.RpcError) as error:
        stub.Regress(wrong, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _predict(server, inputs, name="em3", version=None):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server))
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name))
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value)
    return stub.Predict(request, timeout=10)


def _examples(values):
    return tf.make_tensor_proto(values, dtype=tf.string)


@pytest.mark.parametrize("case", ["malformed", "missing_feature", "mistyped_feature",
                                  "unknown_model", "unknown_version", "empty", "oversized",
                                  "wrong_input_name"])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(server, request_rows, case):
    user, candidates = _user_and_candidates(request_rows, n=3)
    rows = user_rows(user, candidates)
    good = F.to_examples(rows)
    no_item = F.to_examples({k: v for k, v in rows.items() if k != F.ITEM_ID})
    typed = tf.train.Example.FromString(good[0])
    typed.features.feature[F.ITEM_ID].Clear()
    typed.features.feature[F.ITEM_ID].float_list.value.append(1.5)
    cases = {
        "malformed": ({"examples": _examples([b"\xff\x00 not a tf.Example"])}, {},
                      grpc.StatusCode.INVALID_ARGUMENT, ""),
        "missing_feature": ({"examples": _examples(no_item)}, {},
                            grpc.StatusCode.INVALID_ARGUMENT, "item_id"),
        "mistyped_feature": ({"examples": _examples([typed.SerializeToString()])}, {},
                             grpc.StatusCode.INVALID_ARGUMENT, "item_id"),
        "unknown_model": ({"examples": _examples(good)}, {"name": "nope"},
                          grpc.StatusCode.NOT_FOUND, "nope"),
        "unknown_version": ({"examples": _examples(good)}, {"version": 12345},
                            grpc.StatusCode.NOT_FOUND, "12345"),
        "empty": ({"examples": _examples(np.array([], dtype=object))}, {},
                  grpc.StatusCode.INVALID_ARGUMENT, ""),
        "oversized": ({"examples": _examples([b"x" * (5 << 20)])}, {},
                      grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        "wrong_input_name": ({"inputs": _examples(good)}, {},
                             grpc.StatusCode.INVALID_ARGUMENT, ""),
    }
    inputs, spec, code, needle = cases[case]
    with pytest.raises(grpc.RpcError) as error:
        _predict(server, inputs, **spec)
    assert error.value.code() == code, error.value.details()
    assert needle in (error.value.details() or "")
    response = _predict(server, {"examples": _examples(good)})  # still serving
    assert len(tf.make_ndarray(response.outputs["scores"])) == 3


def test_client_retries_unavailable_then_reports_it():
    port = _free_port()  # nothing listens there
    client = EM3Client(f"127.0.0.1:{port}", timeout_s=1, retries=2, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(ServingClientError) as error:
        client.status()
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start >= 0.5 * (0.05 + 0.1)  # two jittered backoff sleeps
    # One overall deadline: many retries allowed, but the call ends within its timeout.
    client = EM3Client(f"127.0.0.1:{port}", timeout_s=0.4, retries=50, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(ServingClientError):
        client.status()
    assert time.monotonic() - start < 0.4 + 0.2  # 0.2 s for the last attempt's own error


def test_new_version_is_picked_up_under_load_without_failures(server, served_copy,
                                                              request_rows):
    """Push a new version while a bounded load loop runs: zero failures, new version after."""
    versions = sorted(int(v) for v in os.listdir(served_copy))
    new_version = versions[-1] + 1
    user, candidates = _user_and_candidates(request_rows, n=10)
    failures, served_versions, stop = [], [], threading.Event()

    def load():
        client = EM3Client(server, timeout_s=10, retries=0)
        serialized = F.to_examples(user_rows(user, candidates))
        deadline = time.monotonic() + 60
        for _ in range(5000):
            if stop.is_set() or time.monotonic() > deadline:
                break
            try:
                served_versions.append(client.predict_examples(serialized)[1])
            except ServingClientError as error:
                failures.append(error)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    # Push like TFX's Pusher: everything first, saved_model.pb last.
    source = os.path.join(served_copy, str(versions[-1]))
    target = os.path.join(served_copy, str(new_version))
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("saved_model.pb"))
    time.sleep(0.5)  # a half-written version sits there: it must not be loaded
    shutil.copy(os.path.join(source, "saved_model.pb"), os.path.join(target, "saved_model.pb"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not served_versions
                                           or served_versions[-1] != new_version):
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert len(served_versions) > 20
    assert served_versions[-1] == new_version
    assert set(served_versions) <= set(versions) | {new_version}


def test_version_labels_from_a_models_config(served_copy, request_rows):
    from serving.write_models_config import models_config
    version = max(int(v) for v in os.listdir(served_copy)
                  if os.path.exists(os.path.join(served_copy, v, "saved_model.pb")))
    srv = serve(models_config(served_copy, stable=version, canary=version), port=0)
    try:
        target = f"127.0.0.1:{srv.port}"
        user, candidates = _user_and_candidates(request_rows, n=3)
        with EM3Client(target, version_label="stable") as client:
            assert len(client.rank(user, candidates)) == 3
        with EM3Client(target, version_label="blue") as client:
            with pytest.raises(ServingClientError) as error:
                client.rank(user, candidates)
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and "blue" in str(error.value)
    finally:
        srv.stop(0)


def test_memory_after_ten_pushes_stays_within_1_3x_of_one_push(pushed_pipeline, tmp_path):
    """The stand-in as its own process (`python -m serving.local_server`), the pushed EM3
    model re-pushed 10 times: retired versions release their memory and threads."""
    import sys

    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    summary, config = pushed_pipeline
    source = os.path.join(config.push_base, summary["serving_versions"][0])
    base = tmp_path / "em3"
    base.mkdir()

    def push(version):
        target = os.path.join(base, str(version))
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("saved_model.pb"))
        shutil.copy(os.path.join(source, "saved_model.pb"), os.path.join(target, "saved_model.pb"))

    push(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.local_server", f"--model_base_path={base}", "--port=0",
         "--file_system_poll_wait_seconds=0.2"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(120)
        assert lines and lines[0], "the server did not start within 120 s"
        port = int(lines[0].split(":")[-1].split()[0])
        stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE

        def wait_for(version):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                response = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
                    model_spec=model_pb2.ModelSpec(name="em3")), timeout=10)
                states = {s.version: s.state for s in response.model_version_status}
                if states == {version: available}:  # --model_base_path: the newest only
                    return time.sleep(0.5)
                time.sleep(0.2)
            raise AssertionError(f"version {version} not served with its predecessor: {states}")

        wait_for(1)
        threads = []
        for version in range(2, 12):
            push(version)
            wait_for(version)
            if version == 2:
                after_one = rss_mb(proc.pid)
            threads.append(len(os.listdir(f"/proc/{proc.pid}/task")))
        after_ten = rss_mb(proc.pid)
        print(f"server RSS after 1 push {after_one:.0f} MB, after 10 {after_ten:.0f} MB; "
              f"threads {threads}")
        assert after_ten <= 1.3 * after_one
        assert threads[-1] <= threads[0]
    finally:
        proc.terminate()
        proc.wait(30)


def test_catalog_update_serves_a_new_item_and_keeps_old_scores(server, served_copy,
                                                              pushed_pipeline, request_rows):
    """`em3_tf.catalog_update.add_items` on the served base directory: the server picks up
    the new version; every old item scores as before and the new item, whose token features
    copy a cold catalog item's, scores exactly as that item (both are unknown to the ID
    embeddings), where before the update it scored as an item without content (1e-6)."""
    from em3_tf.catalog import ItemCatalog
    from em3_tf.catalog_update import add_items

    summary, _ = pushed_pipeline
    catalog = ItemCatalog.load(summary["artifacts"]["ItemCatalogGen/item_catalog"])
    test = request_rows
    cold = int(np.unique(test[F.ITEM_ID][test["is_cold_item"] == 1])[0])
    new_id = int(catalog.item_ids.max()) + 1000 + len(os.listdir(served_copy))  # new per run
    user, warm = _user_and_candidates(test, n=10)
    candidates = [c for c in warm if c != cold][:8] + [cold, new_id]
    with EM3Client(server) as client:
        before = dict(client.rank(user, candidates))
        version_before = client.predict_examples(F.to_examples(user_rows(user, [cold])))[1]
        source = catalog.subset(np.array([cold]))
        target = add_items(served_copy, ItemCatalog(np.array([new_id]), source.tokens,
                                                    source.masks))
        version = int(os.path.basename(target))
        assert version > version_before
        deadline = time.monotonic() + 60
        while client.predict_examples(F.to_examples(user_rows(user, [cold])))[1] != version:
            assert time.monotonic() < deadline, "the new version was not served in 60 s"
            time.sleep(0.2)
        after = dict(client.rank(user, candidates))
    old = [c for c in candidates if c != new_id]
    np.testing.assert_allclose([after[c] for c in old], [before[c] for c in old], atol=1e-6)
    np.testing.assert_allclose(after[new_id], after[cold], atol=1e-6)
    assert abs(before[new_id] - after[new_id]) > 1e-4  # it had no content before
    with pytest.raises(ValueError, match=str(new_id)):
        add_items(served_copy, ItemCatalog(np.array([new_id]), source.tokens, source.masks))
