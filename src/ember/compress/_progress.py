"""The progress bar the compression commands draw while they calibrate, search and train."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(enabled: bool, *extra_columns: Any) -> Any:
    """A started, transient rich Progress on stderr (description, bar, done/total, `extra_columns`,
    time elapsed), or None when disabled or when stderr is not a terminal. Stop it with
    `.__exit__(None, None, None)`."""
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    bar.__enter__()
    return bar
