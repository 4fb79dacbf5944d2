"""Benchmarks (not tests): quality, cost, pipeline wall time, serving latency; see README."""

import os
import platform


def machine() -> str:
    """The machine a result was measured on, as recorded beside it."""
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}, "
            f"Python {platform.python_version()}")
