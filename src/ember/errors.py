"""ember's one exception hierarchy: every error a user can cause is one of these.

Each message says what was wrong, where (file, node, input name), expected vs got, and what to do.
"""

from __future__ import annotations


class EmberError(Exception):
    """Base of every error ember raises on purpose."""


class ModelError(EmberError):
    """The model file or graph is malformed: unreadable file, cycle, dangling input, bad data."""


class InputError(EmberError):
    """The inputs given to `Model.run` do not match the model's signature."""


class UnsupportedError(EmberError):
    """An op, opset version, attribute or dtype that ember does not implement."""


class ConfigError(EmberError):
    """An invalid option passed to an ember API or command."""


class ExecutionError(EmberError):
    """A node failed while running (for example a Reshape to an impossible shape)."""
