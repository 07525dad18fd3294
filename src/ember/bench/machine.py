"""What machine a benchmark ran on: CPU model and flags, core counts, load, library versions.

Recorded in every report so that two reports can be told apart. Reads /proc on Linux; elsewhere the
fields it cannot find are None.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

# Distribution names whose versions a report records, when installed.
LIBRARIES = ("numpy", "onnx", "onnx-ir", "onnxruntime", "openvino", "torch", "threadpoolctl")


def cpu_model() -> str | None:
    """The CPU's name ("AMD EPYC 9R14", ...), from /proc/cpuinfo or the platform module."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_flags() -> dict[str, bool]:
    """CPU features that matter to inference kernels, from ember's native extension."""
    try:
        from ember.kernels.cpu import cpu_info
    except ImportError:  # extension not built: say nothing rather than guess
        return {}
    return cpu_info()


def library_version(dist: str) -> str | None:
    """The installed version of a distribution, or None.

    >>> library_version("numpy") is not None
    True
    """
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: a busy machine shows here and in latency spreads."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe_machine() -> dict[str, Any]:
    """Everything `machine` in the JSON report holds (see ember.bench.schema).

    >>> m = describe_machine()
    >>> m["cpu_count"] >= 1, "numpy" in m["versions"]
    (True, True)
    """
    from ember import __version__

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    versions = {"ember": __version__, "python": platform.python_version()}
    versions.update({d: v for d in LIBRARIES if (v := library_version(d)) is not None})
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "load_average": load_average(),
        "versions": versions,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
