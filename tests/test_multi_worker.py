"""`run_fn` under MultiWorkerMirroredStrategy: two worker processes on loopback ports, each
with its own `TF_CONFIG`, run the EM3 Trainer executor (as the replicas of a Vertex AI /
Kubeflow training job do) on the output of TFX's Transform executor over small SYNTHETIC
data; the data is sharded per worker, the train steps are counted at run time, and only the
chief's export, backup and logs remain."""

import json
import os
import re
import socket
import subprocess
import time

import numpy as np

from em3_tf import features as F
from em3_tf._tf import tf
from em3_tf.data import records
from trainer_inputs import split_in_two_files, start_trainer, transform

BATCH = 256


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_through_run_fn_and_only_the_chief_exports(tmp_path):
    from em3_tf.data.synthetic import make_synthetic

    start = time.monotonic()
    data = make_synthetic(num_users=60, num_items=90, max_history_len=10, seed=3)
    inputs = transform(str(tmp_path), data)
    # two training files, so the workers split them by file; the eval split stays one file
    train_rows = split_in_two_files(os.path.join(inputs["examples"], "Split-train"))
    assert train_rows == len(data.splits["train"][F.ITEM_ID])
    transform_seconds = time.monotonic() - start

    trainer = tmp_path / "root" / "EM3Trainer"
    spec = {**inputs, "model": str(trainer / "model" / "4"),
            "model_run": str(trainer / "model_run" / "4"),
            "custom_config": {"preset": "em3", "em3_overrides": {"max_history_len": 10},
                              "epochs": 2, "patience": 1, "batch_size": BATCH, "seed": 0,
                              "distribute": "auto", "model_name": "em3-multi-worker",
                              "chief_export_wait_s": 120}}
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    workers, logs = [], []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        worker, log = start_trainer(spec, tmp_path / "spec.json",
                                    tmp_path / f"worker-{index}.log", TMPDIR=str(worker_tmp),
                                    TF_CONFIG=json.dumps(tf_config))
        workers.append(worker)
        logs.append(log)

    def worker_logs():
        return "\n".join(f"--- worker {i} ---\n"
                         + (tmp_path / f"worker-{i}.log").read_text()[-4000:] for i in range(2))

    try:
        deadline = time.monotonic() + 400
        for worker in workers:
            worker.wait(max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError("a worker did not finish in time:\n" + worker_logs())
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        for log in logs:
            log.close()
    assert [w.returncode for w in workers] == [0, 0], worker_logs()
    chief, other = ((tmp_path / f"worker-{i}.log").read_text() for i in range(2))

    steps = -(-train_rows // BATCH)
    for log, role in ((chief, "chief"), (other, "not the chief")):
        assert (f"2 replica(s) (MultiWorkerMirroredStrategy, 2 workers, {role}), at most 2 "
                f"epoch(s) of {steps} steps ({train_rows} training examples counted), global "
                f"batch {BATCH}") in log, worker_logs()
        assert "sharding: 2 file(s) for 2 workers, each reads its own files" in log
        assert "sharding: 1 file(s) for 2 workers, each takes every 2nd batch" in log
        assert "export check: max |in-memory - served|" in log
        # the epoch's metrics over both workers (Keras alone sums per-replica AUCs)
        assert all(0.0 < float(v) <= 1.0 for v in re.findall(r"\bauc: ([0-9.e+-]+)", log))
    assert "the chief exported" in other
    val_auc = [re.findall(r"val_auc: ([0-9.e+-]+)", log) for log in (chief, other)]
    assert len(val_auc[0]) >= 1 and val_auc[0] == val_auc[1]  # one global eval AUC

    # one export, the chief's; the other worker's temporary export and the backup are gone
    export = trainer / "model" / "4" / "Format-Serving"
    assert sorted(os.listdir(trainer / "model" / "4")) == ["Format-Serving"]
    assert not list(worker_tmp.glob("em3-worker-export-*")), list(worker_tmp.iterdir())
    assert not os.path.exists(trainer / "backup") or not os.listdir(trainer / "backup")
    assert not list((trainer / "model_run" / "4").glob("**/workertemp_*"))
    test = records.read_split(os.path.join(str(tmp_path), "data"), data.protocol, "test")
    rows = {k: test[k][:64] for k in F.raw_features()}
    scores = tf.saved_model.load(str(export)).signatures["serving_default"](
        examples=tf.constant(F.to_examples(rows)))["scores"].numpy()
    assert scores.shape == (64,) and np.all((scores > 0) & (scores < 1))
    assert scores.std() > 1e-4  # a trained model, not a constant
    print(f"Transform {transform_seconds:.0f} s, workers "
          f"{time.monotonic() - start - transform_seconds:.0f} s")
