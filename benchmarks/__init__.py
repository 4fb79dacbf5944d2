"""Benchmarks (not tests): quality, cost, pipeline wall time, serving latency; see README."""

import os
import platform

RESULTS = "benchmarks/results"  # where the benchmarks write and `report` reads


def recorded_hyperparameters(preset: str = "") -> str:
    """The directory of the recorded (tuned, then swept) MovieLens-100K hyper-parameters, or
    of one preset's: what the quality table, the pipeline and the other benchmarks train with."""
    from pipelines.config import PipelineConfig
    directory = os.path.join(PipelineConfig().hyperparameters_dir, "ml-100k")
    return os.path.join(directory, preset) if preset else directory


def machine() -> str:
    """The machine a result was measured on, as recorded beside it."""
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}, "
            f"Python {platform.python_version()}")
