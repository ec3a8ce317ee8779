"""Per-epoch training checkpoints: one file per trial, replaced atomically after every epoch.

A trial's checkpoint lets a retry of it (after its worker died) continue from the last finished
epoch. It is written to a temporary file and renamed over the old one, so a kill mid-write leaves
the previous checkpoint whole; it is read with ``weights_only=True``, so loading one runs no code;
and it is deleted when the trial finishes, so disk use is bounded by the trials in flight.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from search.errors import StorageError


def trial_path(folder: Path, number: int) -> Path:
    """The checkpoint file of the trial (or configuration) numbered ``number`` in ``folder``."""
    return folder / f"{number}.pt"


class FileCheckpoint:
    """The checkpoint of one trial at ``path``."""

    def __init__(self, path: Path, map_location: torch.device) -> None:
        self.path = path
        self.map_location = map_location
        self.restored_epochs: float = (
            0  # epochs the last load brought back (a paused trial's: a fraction)
        )

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location=self.map_location, weights_only=True)
            history = state["history"]
            self.restored_epochs = history[-1]["epoch"] if history else 0
            return state
        except (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as e:
            raise StorageError(
                f"checkpoint {self.path}: unreadable ({type(e).__name__}); "
                "delete it to start the trial afresh"
            ) from None

    def save(self, state: dict[str, Any]) -> None:
        # Serialized in memory first: torch.save on a full disk fails with an opaque RuntimeError,
        # while a plain write says "No space left on device".
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.write(buffer)

    def write(self, buffer: io.BytesIO) -> None:
        """Replace the checkpoint with ``buffer``, a state already serialized by `torch.save`."""
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())  # on disk before the rename makes it the checkpoint
            os.replace(partial, self.path)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise StorageError(f"checkpoint {self.path}: cannot write: {e.strerror or e}") from None

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
