"""QuantConfig: defaults, every field's validation, and the words of each error."""

from __future__ import annotations

import dataclasses

import pytest

from ember.compress import QuantConfig
from ember.errors import ConfigError


def test_defaults_are_static_int8_minmax_per_channel() -> None:
    c = QuantConfig()
    assert (c.mode, c.bits, c.method, c.per_channel, c.activation_type) == (
        "static",
        8,
        "minmax",
        True,
        "auto",
    )
    assert c.op_types == ("Conv", "Gemm", "MatMul")
    assert c.smoothquant is None and c.bias_correction and c.exclude == ()


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuantConfig().mode = "dynamic"  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "dynamic"},
        {"mode": "weight-only", "bits": 4, "group_size": 32},
        {"mode": "weight-only", "bits": 8, "group_size": 64},
        {"mode": "fp16"},
        {"mode": "bf16"},
        {"method": "entropy"},
        {"method": "mse"},
        {"method": "percentile", "percentile": 99.9},
        {"activation_type": "int8"},
        {"smoothquant": 0.5},
        {"smoothquant": 1.0},
        {"smoothquant": 0.0},  # off, even where ember.quantize would turn it on
        {"op_types": ("MatMul",)},
        {"exclude": ("node_a",)},
        {"calibration_samples": 100},
        {"max_drop": 0.01},
        {"max_drop": 0},
    ],
)
def test_valid_configs(kwargs: dict[str, object]) -> None:
    c = QuantConfig(**kwargs)  # type: ignore[arg-type]
    for key, value in kwargs.items():
        assert getattr(c, key) == value


# (field, bad value, words the message must contain besides the field and the value)
BAD = [
    ("mode", "int8", "'static'"),
    ("bits", 2, "8, or 4"),
    ("bits", 8.0, "8, or 4"),
    ("method", "kl", "'entropy'"),
    ("per_channel", "yes", "True, False"),
    ("percentile", 40.0, "(50, 100]"),
    ("percentile", 101, "(50, 100]"),
    ("group_size", 16, "32, 64, 128"),
    ("group_size", 100, "32, 64, 128"),
    ("activation_type", "int4", "'uint8'"),
    ("op_types", ("Conv", "Add"), "'MatMul'"),
    ("op_types", (), "non-empty"),
    ("op_types", ["Conv"], "tuple"),
    ("smoothquant", 1.5, "(0, 1]"),
    ("smoothquant", True, "(0, 1]"),
    ("bias_correction", 1, "True, False"),
    ("exclude", "conv1", "tuple of node names"),
    ("calibration_samples", 0, ">= 1"),
    ("calibration_samples", 1.5, ">= 1"),
    ("max_drop", -0.1, "[0, 1)"),
    ("max_drop", 1.0, "[0, 1)"),
]


@pytest.mark.parametrize(("field", "value", "allowed"), BAD)
def test_invalid_field_names_field_value_and_allowed(
    field: str, value: object, allowed: str
) -> None:
    with pytest.raises(ConfigError) as err:
        QuantConfig(**{field: value})  # type: ignore[arg-type]
    message = str(err.value)
    assert f"QuantConfig.{field}" in message
    assert repr(value) in message
    assert allowed in message


@pytest.mark.parametrize("mode", ["static", "dynamic", "fp16", "bf16"])
def test_four_bits_only_with_weight_only(mode: str) -> None:
    with pytest.raises(
        ConfigError, match=r"bits: got 4 with mode=.*4 only with mode='weight-only'"
    ):
        QuantConfig(mode=mode, bits=4)


def test_is_integer() -> None:
    assert QuantConfig().is_integer and QuantConfig(mode="weight-only").is_integer
    assert not QuantConfig(mode="fp16").is_integer and not QuantConfig(mode="bf16").is_integer
