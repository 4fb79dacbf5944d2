"""What a local pipeline run prints: one line per component, and no library noise.

By default (`quiet()`, called before TensorFlow is imported):
  - TensorFlow's C++ log, Python warnings, and the INFO / WARNING records of absl, TFX, Beam,
    TFMA and TensorFlow are silenced at the source (log levels, warning filters);
  - TFX's "Component X is finished." records become one line each: the component, its wall
    time, whether it ran or was cached, and where its outputs went (from ML Metadata);
  - ERROR records and exceptions still come through in full.
`--verbose` skips all of this and restores every library's own output.
"""

import contextlib
import logging
import os
import re
import sys
import time
import warnings

_EVENT = re.compile(r"Component (\S+) is (running|finished)\.")
CACHED = 5  # ml_metadata Execution.State.CACHED


def quiet() -> None:
    """Silences library output (see the module docstring); call before importing TF."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # Beam's worker processes too
    warnings.filterwarnings("ignore")
    logging.captureWarnings(True)


class ComponentLines(logging.Handler):
    """Root logging handler of a quiet run: one line per finished component; ERROR and
    above as they are; everything else dropped."""

    def __init__(self, config=None, stream=None):
        super().__init__(logging.INFO)
        self.config, self.stream = config, stream or sys.stdout  # config: set before the run
        self.started = {}

    def emit(self, record):
        if record.levelno >= logging.ERROR:
            self.stream.write(logging.Formatter("%(levelname)s:%(name)s:%(message)s")
                              .format(record) + "\n")
            return
        match = _EVENT.fullmatch(record.getMessage())
        if not match or self.config is None:
            return
        name, event = match.groups()
        if event == "running":
            self.started[name] = time.monotonic()
            return
        seconds = time.monotonic() - self.started.pop(name, time.monotonic())
        state, outputs = self._latest(name)
        self.stream.write(f"  {name:32s} {seconds:6.1f} s  {state:6s} {outputs}\n")
        self.stream.flush()

    def _latest(self, component):
        """`(ran|cached, output directory)` of the component's newest execution."""
        try:
            store = metadata_store(self.config)
            latest = latest_execution(store, self.config, component)
        except Exception:  # the line is informative only; never fail the run for it
            return "", ""
        if latest is None:
            return "", ""
        outputs = sorted({os.path.dirname(a.uri) for a in store.get_artifacts_by_id(
            [e.artifact_id for e in store.get_events_by_execution_ids([latest.id])
             if e.type == e.OUTPUT])})
        where = (os.path.relpath(outputs[0], self.config.pipeline_root) + "/"
                 + (f" (+{len(outputs) - 1})" if len(outputs) > 1 else "")) if outputs else ""
        return ("cached" if latest.last_known_state == CACHED else "ran"), where


def metadata_store(config):
    """The pipeline's ML Metadata store (SQLite)."""
    from ml_metadata.metadata_store import metadata_store as mlmd
    from tfx.orchestration import metadata
    return mlmd.MetadataStore(metadata.sqlite_metadata_connection_config(config.metadata_path))


def latest_execution(store, config, component):
    """The newest ML Metadata execution of `component` in `config`'s pipeline, or None."""
    node = store.get_context_by_type_and_name("node", f"{config.pipeline_name}.{component}")
    executions = store.get_executions_by_context(node.id) if node else []
    return max(executions, key=lambda e: e.id) if executions else None


def component_states(config, components) -> dict:
    """`{component: "ran" | "cached"}` of each component's newest execution."""
    store = metadata_store(config)
    return {name: "cached" if latest_execution(store, config, name).last_known_state == CACHED
            else "ran" for name in components}


@contextlib.contextmanager
def component_lines(config=None):
    """Within the block, every log record goes through a `ComponentLines` handler (yielded;
    set its `config` before the run) and the libraries log ERROR only; restored after."""
    import absl.logging
    import tensorflow as tf  # creates its logger and handler now, so they can be replaced
    tf.get_logger()
    root = logging.getLogger()
    names = ("tensorflow", "apache_beam", "tensorflow_model_analysis", "tfx_bsl",
             "tensorflow_data_validation", "tensorflow_transform", "h5py", "keras_tuner")
    saved = ([(root, root.level, list(root.handlers))]
             + [(logging.getLogger(n), logging.getLogger(n).level,
                 list(logging.getLogger(n).handlers)) for n in names])
    verbosity = absl.logging.get_verbosity()
    handler = ComponentLines(config)
    try:
        absl.logging.set_verbosity(absl.logging.INFO)  # the component events are INFO
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        for name in names:
            logger = logging.getLogger(name)
            logger.setLevel(logging.ERROR)
            logger.handlers[:] = []
        yield handler
    finally:
        absl.logging.set_verbosity(verbosity)
        for logger, level, handlers in saved:
            logger.setLevel(level)
            logger.handlers[:] = handlers
