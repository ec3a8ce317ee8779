"""Reading torchvision datasets from ``--data-dir`` with an error that lists what is missing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from search.errors import TaskError


def open_dataset(
    cls: type,
    data_dir: Path,
    download: bool,
    train: bool,
    missing: Callable[[Path], Iterable[Path]],
) -> Any:
    """``cls(data_dir, train, download)``; a `TaskError` naming the missing files otherwise."""
    if not download:
        absent = list(missing(data_dir))
        if absent:
            raise TaskError(
                f"{cls.__name__} data not found in {data_dir}: missing or corrupt "
                f"{', '.join(str(p) for p in absent)}; pass --download to fetch it "
                f"(needs network), or copy the files there"
            )
    try:
        return cls(str(data_dir), train=train, download=download)
    except (RuntimeError, OSError, ValueError) as e:
        # Download failures (no network, bad checksum) and unreadable files end up here.
        raise TaskError(f"{cls.__name__} in {data_dir}: {e}") from None
