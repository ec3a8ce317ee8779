"""Fault injection, for testing what machines here cannot do for real.

``SEARCH_FAULT_OOM_BATCH=N`` makes every trial whose batch size is at least N raise
``torch.cuda.OutOfMemoryError`` at its first training step, as a GPU too small for that batch
would. The error then takes the same path as a real one: memory freed, the trial FAIL with reason
``oom``, the study going on.
"""

from __future__ import annotations

import os

import torch

OOM_BATCH = "SEARCH_FAULT_OOM_BATCH"


def check_oom(batch_size: int) -> None:
    threshold = os.environ.get(OOM_BATCH)
    if threshold and batch_size >= int(threshold):
        raise torch.cuda.OutOfMemoryError(
            f"out of memory at batch size {batch_size} (injected by {OOM_BATCH}={threshold})"
        )
