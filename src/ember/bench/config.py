"""What a benchmark run is asked to do: a frozen, validated BenchConfig, and CLI string parsers.

Knows nothing about engines or timing; every bad value fails here with a ConfigError naming it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

from ember.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "int8")
TASKS = ("auto", "classify", "embed")
# Peer names a user may give, and their aliases; "openvino" becomes two rows (f32 hint and default).
PEERS = ("ort", "openvino", "torch")
_ALIASES = {"onnxruntime": "ort", "ov": "openvino", "pytorch": "torch"}


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask), which is what every engine gets.

    >>> default_threads() >= 1
    True
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. Timing: per engine and batch, `warmup` untimed calls (at least; up to
    `min_time / 10` seconds of them), then `rounds` interleaved slices of `min_time / rounds`
    seconds each (at least one call per slice, at most `max_iters` timed calls in all).

    >>> BenchConfig(batches=(1, 8), peers=("ort",)).threads >= 1
    True
    >>> BenchConfig(batches=(0,))
    Traceback (most recent call last):
    ...
    ember.errors.ConfigError: batch sizes must be positive integers, got [0]
    """

    batches: tuple[int, ...] = (1,)
    peers: tuple[str, ...] = ("ort", "openvino")
    threads: int = dataclasses.field(default_factory=default_threads)
    precision: str = "fp32"
    min_time: float = 2.0  # seconds of timed calls per engine and batch
    max_iters: int = 1000  # timed calls per engine and batch, at most
    rounds: int = 10  # interleaved slices per engine and batch
    warmup: int = 2  # untimed calls per engine and batch, at least (the first one is timed apart)
    task: str = "auto"  # how outputs are compared with ember's exact mode
    dims: Mapping[str, int] = dataclasses.field(
        default_factory=dict
    )  # symbolic dims other than batch
    seed: int = 0
    measure_memory: bool = True

    def __post_init__(self) -> None:
        batches = tuple(self.batches)
        if not batches or any(
            not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in batches
        ):
            raise ConfigError(f"batch sizes must be positive integers, got {list(batches)}")
        if len(set(batches)) != len(batches):
            raise ConfigError(f"batch sizes must be distinct, got {list(batches)}")
        object.__setattr__(self, "batches", tuple(sorted(batches)))
        object.__setattr__(self, "peers", tuple(normalize_peers(self.peers)))
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if not self.min_time > 0:
            raise ConfigError(f"min_time must be > 0 seconds, got {self.min_time!r}")
        for name in ("max_iters", "rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 1:
            raise ConfigError(f"warmup must be at least 1 call, got {self.warmup!r}")
        for name, size in self.dims.items():
            if not isinstance(size, int) or size < 1:
                raise ConfigError(f"dim {name!r} must be a positive integer, got {size!r}")
        object.__setattr__(self, "dims", dict(self.dims))

    @property
    def rounds_effective(self) -> int:
        """Every engine runs at least one call per round: never more rounds than calls."""
        return min(self.rounds, self.max_iters)


def normalize_peers(peers: Sequence[str]) -> list[str]:
    """Canonical peer names, in the order given, without duplicates; unknown names fail.

    >>> normalize_peers(["onnxruntime", "ov", "ort"])
    ['ort', 'openvino']
    """
    if isinstance(peers, str):
        raise ConfigError(f"peers must be a list of names, got the string {peers!r}")
    out: list[str] = []
    for raw in peers:
        name = _ALIASES.get(str(raw).strip().lower(), str(raw).strip().lower())
        if name not in PEERS:
            raise ConfigError(f"unknown peer {raw!r}; known peers: {', '.join(PEERS)}")
        if name not in out:
            out.append(name)
    return out


def parse_batches(text: str) -> tuple[int, ...]:
    """`--batch 1,8,32` -> (1, 8, 32).

    >>> parse_batches("32, 1,8")
    (1, 8, 32)
    """
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t.isdigit() or int(t) < 1 for t in items):
        raise ConfigError(
            f"--batch {text!r}: expected comma-separated positive integers, e.g. 1,8,32"
        )
    if len(set(map(int, items))) != len(items):
        raise ConfigError(f"--batch {text!r}: a batch size is repeated")
    return tuple(sorted(int(t) for t in items))


def parse_peers(text: str) -> tuple[str, ...]:
    """`--peers ort,openvino` -> ("ort", "openvino"); `--peers none` -> () (ember alone).

    >>> parse_peers("ORT, openvino")
    ('ort', 'openvino')
    """
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(normalize_peers(text.split(",")))
    except ConfigError as e:
        raise ConfigError(f"--peers {text!r}: {e}") from None
