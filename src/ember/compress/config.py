"""QuantConfig: every quantization option in one frozen, validated dataclass.

Knows nothing about graphs or data; `quantize_graph` and `calibrate` read it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from ember.errors import ConfigError

MODES = ("static", "dynamic", "weight-only", "fp16", "bf16")
METHODS = ("minmax", "percentile", "entropy", "mse")
ACTIVATION_TYPES = ("auto", "uint8", "int8")
GROUP_SIZES = (32, 64, 128)
#: op types the quantizer knows how to quantize (the compute ops; pass-through ops follow them)
QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")


def _fail(field: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"QuantConfig.{field}: got {value!r}; allowed: {allowed}")


def _check_choice(field: str, value: Any, choices: Collection[Any]) -> None:
    if value not in choices:
        raise _fail(field, value, ", ".join(repr(c) for c in choices))


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How to quantize a model. Every field is validated on construction.

    >>> QuantConfig(mode="weight-only", bits=4, group_size=32).bits
    4
    >>> QuantConfig(bits=4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ember.errors.ConfigError: QuantConfig.bits: got 4 with mode='static'; allowed: 8, or 4 only ...
    """

    mode: str = "static"  # "static" | "dynamic" | "weight-only" | "fp16" | "bf16"
    bits: int = 8  # 8, or 4 (weight-only only)
    method: str = "minmax"  # static calibration: "minmax" | "percentile" | "entropy" | "mse"
    per_channel: bool = True
    percentile: float = 99.999  # for method="percentile"
    group_size: int = 128  # weight-only: 32 | 64 | 128
    activation_type: str = "auto"  # "auto" (uint8, as ORT on VNNI/AVX2) | "uint8" | "int8"
    op_types: tuple[str, ...] = QUANTIZABLE_OPS
    # SmoothQuant alpha in (0, 1]; 0 = off; None = ember.quantize decides (on, alpha 0.5, for
    # static int8 of models that multiply activations, i.e. transformers; quantize_graph: off)
    smoothquant: float | None = None
    bias_correction: bool = True
    exclude: tuple[str, ...] = ()  # node names never quantized
    calibration_samples: int | None = None  # cap on samples read; None = all
    max_drop: float | None = None  # accuracy budget for the sensitivity loop

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, MODES)
        if type(self.bits) is not int or self.bits not in (4, 8):
            raise _fail("bits", self.bits, "8, or 4 (with mode='weight-only')")
        if self.bits == 4 and self.mode != "weight-only":
            raise ConfigError(
                f"QuantConfig.bits: got 4 with mode={self.mode!r}; allowed: 8, "
                "or 4 only with mode='weight-only'"
            )
        _check_choice("method", self.method, METHODS)
        if not isinstance(self.per_channel, bool):
            raise _fail("per_channel", self.per_channel, "True, False")
        if (
            isinstance(self.percentile, bool)
            or not isinstance(self.percentile, int | float)
            or not 50.0 < self.percentile <= 100.0
        ):
            raise _fail("percentile", self.percentile, "a number in (50, 100], e.g. 99.999")
        if type(self.group_size) is not int or self.group_size not in GROUP_SIZES:
            raise _fail("group_size", self.group_size, ", ".join(map(str, GROUP_SIZES)))
        _check_choice("activation_type", self.activation_type, ACTIVATION_TYPES)
        if not isinstance(self.op_types, tuple) or not self.op_types:
            raise _fail(
                "op_types", self.op_types, f"a non-empty tuple drawn from {QUANTIZABLE_OPS}"
            )
        for op_type in self.op_types:
            if op_type not in QUANTIZABLE_OPS:
                raise _fail(
                    "op_types",
                    self.op_types,
                    f"a tuple drawn from {', '.join(map(repr, QUANTIZABLE_OPS))} "
                    f"({op_type!r} is not one)",
                )
        if self.smoothquant is not None and (
            isinstance(self.smoothquant, bool)
            or not isinstance(self.smoothquant, int | float)
            or not 0.0 <= self.smoothquant <= 1.0
        ):
            raise _fail(
                "smoothquant", self.smoothquant, "None (auto), 0 (off) or alpha in (0, 1], e.g. 0.5"
            )
        if not isinstance(self.bias_correction, bool):
            raise _fail("bias_correction", self.bias_correction, "True, False")
        if not isinstance(self.exclude, tuple) or not all(isinstance(n, str) for n in self.exclude):
            raise _fail("exclude", self.exclude, "a tuple of node names")
        if self.calibration_samples is not None and (
            type(self.calibration_samples) is not int or self.calibration_samples < 1
        ):
            raise _fail("calibration_samples", self.calibration_samples, "None or an int >= 1")
        if self.max_drop is not None and (
            isinstance(self.max_drop, bool)
            or not isinstance(self.max_drop, int | float)
            or not 0.0 <= self.max_drop < 1.0
        ):
            raise _fail(
                "max_drop", self.max_drop, "None or a fraction in [0, 1), e.g. 0.01 for 1 point"
            )

    @property
    def is_integer(self) -> bool:
        """True for the int8/int4 modes, False for the float conversions (fp16, bf16)."""
        return self.mode in ("static", "dynamic", "weight-only")
