"""Where a study's data lives while it trains: on the device, or streamed from the host.

The rule: the prepared training and validation inputs (float32, or int64 token ids and codes) stay
resident on the device when they take at most half of its free memory (CUDA's free memory, or the RAM available on the CPU), shared by
the processes that train on it; otherwise batches stream from host memory (or the memory-mapped
cache of the user's data). Half leaves room for the model, its activations and the optimizer.
``--data-mode resident|stream`` forces either path; a trial records which one it took.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from search.contract import TrainingData
from search.spaces import Space
from search.tasks.data import DeviceData
from search.tasks.registry import Split, Task
from search.tasks.scaling import is_integer, standardized_by_default
from search.tasks.streaming import StreamingData

DATA_MODES = ("auto", "resident", "stream")
RESIDENT_SHARE = 0.5


def load_data(
    task: Task,
    space: Space,
    *,
    seed: int,
    device: torch.device,
    mode: str = "auto",
    data_dir: Path = Path("data"),
    download: bool = False,
    processes: int = 1,
) -> TrainingData:
    """The task's training split on ``device`` (or streamed to it), with the study's seeded
    validation split (or the data's own)."""
    split = task.load(data_dir, download, True)
    if mode == "auto":
        mode = choose(resident_bytes(split, task), device, processes)
    kind = {"resident": DeviceData, "stream": StreamingData}[mode]  # checked with the settings
    return kind.from_split(
        split,
        val_fraction=space.val_fraction,
        seed=seed,
        device=device,
        augment=task.augment,
        val=task.validation,
        normalize=task.normalize,
        regression=task.scoring.kind == "regression",
    )


def resident_bytes(split: Split, task: Task) -> int:
    """What the resident path keeps on the device: the prepared training and validation inputs
    (float32, or int64 for integers kept as they are)."""
    examples = len(split) + (0 if task.validation is None else len(task.validation))
    inputs = split.inputs if isinstance(split.inputs, tuple) else (split.inputs,)
    per_example = 0
    for x in inputs:
        kept = is_integer(x) and not (
            standardized_by_default(x) if task.normalize is None else task.normalize
        )
        per_example += x[0].numel() * (8 if kept else 4)
    return examples * per_example


def choose(nbytes: int, device: torch.device, processes: int = 1) -> str:
    """``resident`` when ``nbytes`` for each of ``processes`` fit in the resident share of the
    device's free memory, else ``stream``."""
    return "resident" if nbytes * processes <= RESIDENT_SHARE * free_memory(device) else "stream"


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's own count, or the RAM the kernel says is available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
