"""Model versions on disk and the manager that loads, serves and retires them.

Version directories (`<base_path>/<version>/`), as TF Serving reads them: a name is a version
when it parses as a signed 64-bit integer (leading zeros allowed: `0007` is version 7); other
names are skipped. When two names give one number, the lexicographically last one is used.
A version counts once its `saved_model.pb` exists: TFX's Pusher and TF Serving's tooling write
it last, so a half-copied version is never loaded.

`VersionManager` follows TF Serving's availability-preserving policy:
  - the aspired versions are those of the model's version policy (the newest N, specific
    ones, or all) among the complete versions on disk;
  - a new aspired version is loaded in the background (SavedModel, signatures, warm-up); a
    failed load is retried up to `max_num_load_retries` times, waiting
    `load_retry_interval_s * 2**attempt`; after that the version is in error (END) and stays
    out of service;
  - a version that is no longer aspired is unloaded only once an aspired version is
    available (or none is aspired), so a broken push never takes the model down;
  - a version whose directory is gone is forgotten (an errored one at once); when its
    directory comes back, or an errored version's files change (a re-push), it is loaded
    afresh with a new retry budget;
  - requests without a version get the newest available version; an unloaded version waits
    for its requests in flight, then releases its threads and memory.
"""

import logging
import re
import threading
import time
from typing import Dict, List, Optional, Tuple

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.stand_in.batching import BatchingParameters
from serving.stand_in.servable import Servable
from serving.stand_in.status import ServingError, invalid

log = logging.getLogger("em3.local_server")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
State = get_model_status_pb2.ModelVersionStatus.State


def parse_version(name: str) -> Optional[int]:
    """The version number of directory `name`, or None if it is not a 64-bit integer."""
    text = name.rstrip("/").strip()
    if not re.fullmatch(r"-?\d+", text):
        return None
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else None


def version_dirs(base_path: str) -> Dict[int, str]:
    """`{version: directory name}` of the complete versions under `base_path`."""
    if not tf.io.gfile.isdir(base_path):
        return {}
    found: Dict[int, str] = {}
    for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(base_path)):
        version = parse_version(name)
        if version is None:
            continue
        if version in found:
            log.warning("Duplicate version directories detected. Version %d will be loaded "
                        "from %s, %s will be ignored.", version, name, found[version])
        found[version] = name
    return {v: n for v, n in found.items()
            if tf.io.gfile.exists(tf.io.gfile.join(base_path, n, "saved_model.pb"))}


def fingerprint(path: str) -> Tuple:
    """Changes when the version's files are replaced (a re-push under the same number)."""
    out = []
    for name in ("saved_model.pb", "variables/variables.index"):
        try:
            stat = tf.io.gfile.stat(tf.io.gfile.join(path, name))
            out.append((stat.length, stat.mtime_nsec))
        except tf.errors.NotFoundError:
            out.append(None)
    return tuple(out)


class _Version:
    def __init__(self, number, path):
        self.number, self.path = number, path
        self.fingerprint = fingerprint(path)
        self.state = State.START
        self.servable: Optional[Servable] = None
        self.error = ""
        self.failures = 0
        self.retry_at = 0.0


class VersionManager:
    """Serves the versions of one model (a `ModelConfig`), polling its base path.

    Args:
      config: the model's `ModelConfig` (name, base_path, version policy, labels).
      batching: `BatchingParameters` or None.
      poll_s: seconds between file-system polls (`--file_system_poll_wait_seconds`).
      max_num_load_retries, load_retry_interval_s: the load retry budget and first wait.
      warmup_iterations: replays of each warm-up record.
    """

    def __init__(self, config: model_server_config_pb2.ModelConfig,
                 batching: Optional[BatchingParameters] = None, poll_s=1.0,
                 max_num_load_retries=5, load_retry_interval_s=1.0, warmup_iterations=1):
        self.config, self.batching = config, batching
        self.poll_s, self.max_retries = poll_s, int(max_num_load_retries)
        self.retry_interval_s, self.warmup_iterations = load_retry_interval_s, warmup_iterations
        self._versions: Dict[int, _Version] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._poll, daemon=True, name=f"poll-{self.name}")
        self._thread.start()

    @property
    def name(self) -> str:
        return self.config.name

    def _aspired(self, on_disk: List[int]) -> List[int]:
        policy = self.config.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return on_disk
        if kind == "specific":
            return [v for v in on_disk if v in set(policy.specific.versions)]
        keep = policy.latest.num_versions if kind == "latest" else 1
        return on_disk[-max(1, keep):]

    def refresh(self):
        """One poll: forget, reset, load and unload versions (see the module docstring)."""
        dirs = version_dirs(self.config.base_path)
        aspired = set(self._aspired(sorted(dirs)))
        with self._lock:
            for number in list(self._versions):
                entry = self._versions[number]
                path = (tf.io.gfile.join(self.config.base_path, dirs[number])
                        if number in dirs else None)
                if entry.state != State.AVAILABLE and (
                        path != entry.path or fingerprint(entry.path) != entry.fingerprint):
                    del self._versions[number]  # gone, or replaced: forget it
            for number in sorted(aspired, reverse=True):
                if number not in self._versions:
                    self._versions[number] = _Version(
                        number, tf.io.gfile.join(self.config.base_path, dirs[number]))
        for number in sorted(aspired, reverse=True):
            self._maybe_load(number)
        self._unload_unaspired(aspired)

    def _maybe_load(self, number):
        with self._lock:
            entry = self._versions.get(number)
        if entry is None or entry.state == State.AVAILABLE or time.monotonic() < entry.retry_at:
            return
        if entry.state == State.END:
            return  # retries exhausted: only a change of its files brings it back
        entry.state = State.LOADING
        try:
            servable = Servable(self.name, number, entry.path, self.batching,
                                self.warmup_iterations)
        except Exception as error:  # noqa: BLE001 - a broken version is never served
            entry.failures += 1
            entry.error = str(error).strip() or type(error).__name__
            if entry.failures > self.max_retries:
                entry.state = State.END
                log.error("model %s version %d failed to load (giving up after %d attempts): "
                          "%s", self.name, number, entry.failures, entry.error[:500])
            else:
                entry.state = State.START
                entry.retry_at = (time.monotonic()
                                  + self.retry_interval_s * 2 ** (entry.failures - 1))
                log.warning("model %s version %d failed to load (attempt %d, retrying): %s",
                            self.name, number, entry.failures, entry.error[:500])
            return
        with self._lock:
            if self._versions.get(number) is entry:
                entry.servable, entry.state, entry.error = servable, State.AVAILABLE, ""
                servable = None
        if servable is not None:  # forgotten while it loaded
            servable.close()
            return
        log.info("model %s version %d is AVAILABLE", self.name, number)

    def _unload_unaspired(self, aspired):
        while True:
            with self._lock:
                ready = {n for n, e in self._versions.items() if e.state == State.AVAILABLE}
                unaspired = sorted(ready - aspired)
                if not unaspired or not (not aspired or ready & aspired or len(unaspired) > 1):
                    return
                entry = self._versions.pop(unaspired[0])
            entry.servable.close()  # waits for its requests in flight
            entry.servable = None
            log.info("model %s version %d unloaded", self.name, entry.number)

    def _poll(self):
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception as error:  # noqa: BLE001 - keep polling
                log.error("polling %s: %s", self.config.base_path, error)

    def close(self):
        """Stops polling and unloads every version."""
        self._stop.set()
        self._thread.join(30)
        with self._lock:
            entries, self._versions = list(self._versions.values()), {}
        for entry in entries:
            if entry.servable is not None:
                entry.servable.close()

    # Requests --------------------------------------------------------------------------------

    def servable(self, model_spec):
        """The servable `model_spec` asks for, marked in use: `with manager.servable(spec) as s`.

        Raises NOT_FOUND for a version that is not available, INVALID_ARGUMENT for an unknown
        label.
        """
        choice = model_spec.WhichOneof("version_choice")
        with self._lock:
            ready = {n: e.servable for n, e in self._versions.items()
                     if e.state == State.AVAILABLE}
            if choice == "version_label":
                label = model_spec.version_label
                if label not in self.config.version_labels:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = self.config.version_labels[label]
            elif choice == "version":
                version = model_spec.version.value
            else:
                if not ready:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: Latest({self.name})")
                version = max(ready)
            if version not in ready:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Specific({self.name}, "
                                   f"{version})")
            return ready[version].in_use()

    def status(self, version: Optional[int]) -> List[get_model_status_pb2.ModelVersionStatus]:
        """GetModelStatus' entries, newest first."""
        with self._lock:
            entries = {n: (e.state, e.error) for n, e in self._versions.items()}
        if version is not None:
            if version not in entries:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {self.name}")
            entries = {version: entries[version]}
        out = []
        for number in sorted(entries, reverse=True):
            state, error = entries[number]
            status = get_model_status_pb2.ModelVersionStatus(version=number, state=state)
            status.status.SetInParent()  # error_code OK, as TF Serving reports it
            if error:
                status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                status.status.error_message = error
            out.append(status)
        return out
