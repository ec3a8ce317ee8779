"""How many worker processes a machine runs a study with, and how many threads each: `--jobs auto`
and `--threads`.

Threads: PyTorch's default is one per core in every process, so two processes on two cores fight
for them (a step then takes tens of times as long). Workers therefore split the cores that this
process may use (its CPU affinity and any cgroup quota, not the machine's count) between them,
at least one thread each, unless ``--threads`` says otherwise.

``--jobs auto`` measures a short trial of the space's largest configuration on worker 0's data
and device, then picks:

- on the CPU: one process per core with one thread each, when a core alone trains more than its
  share of all cores together (small models, which threads barely speed up), else one process
  with every core;
- on a GPU: enough processes to keep it busy. A step of batch b costs launch time L plus device
  time c·b; timing batches b and 4b gives both, and 1/(busy share) = (L + c·b)/(c·b) processes
  fill the GPU, capped by its free memory over the trial's peak (with a fifth to spare), by
  the cores (each process needs one to launch from) and by `MAX_GPU_PROCESSES`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search.contract import LOOP_PARAMS, Hyperparameters, TrainingData
from search.errors import SettingsError
from search.tasks import Split
from search.tasks.data import DeviceData
from search.train import fit

MAX_GPU_PROCESSES = 8
PROBE_STEPS = 8  # timed steps per measurement, after an untimed pass over the same batches
MEMORY_SPARE = 0.2  # of the GPU's free memory, left to the allocator's fragmentation


CGROUP_QUOTA = Path("/sys/fs/cgroup/cpu.max")  # a container's CPU limit, in cgroup v2


def usable_cores(quota: Path = CGROUP_QUOTA) -> int:
    """The cores this process may run on: its affinity, capped by a cgroup v2 CPU ``quota``
    (``max``, or microseconds of CPU per period: 150000 100000 is one and a half cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        limit, period = quota.read_text().split()
        if limit != "max":
            cores = min(cores, max(1, math.floor(int(limit) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def threads_per_worker(jobs: int, threads: int | None = None) -> int:
    """Torch threads for each of ``jobs`` processes on this machine: ``threads`` if given, else
    the usable cores split between them (never more threads in all than cores)."""
    if threads is not None:
        if threads < 1:
            raise SettingsError(f"--threads must be at least 1, got {threads}")
        return threads
    return max(1, usable_cores() // jobs)


@dataclass(frozen=True)
class Choice:
    """What `--jobs auto` picked, and why (``reason``: one line for the user)."""

    jobs: int
    threads: int
    reason: str


def choose(task: Any, space: Any, data: TrainingData, device: torch.device, trials: int) -> Choice:
    """Worker processes and threads for a study of ``trials`` on ``device``, from a short
    measured trial of the space's largest configuration (see the module docstring)."""
    params = space.extreme_configurations()[-1]
    model_params = {k: v for k, v in params.items() if k not in LOOP_PARAMS}
    return choose_for(task, model_params, space.hyperparameters(params), data, device, trials)


def choose_for(
    task: Any,
    params: dict[str, Any],
    hp: Hyperparameters,
    data: TrainingData,
    device: torch.device,
    trials: int,
) -> Choice:
    """`choose`, measured on the model of ``params`` trained with ``hp``."""
    cores = usable_cores()
    if device.type == "cuda":
        return _gpu(task, params, hp, data, device, cores, trials)
    return _cpu(task, params, hp, data, cores, trials)


def _cpu(
    task: Any, params: dict[str, Any], hp: Any, data: TrainingData, cores: int, trials: int
) -> Choice:
    if cores == 1:
        return Choice(1, 1, "one usable core")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = _step_seconds(task, params, hp, data)
        torch.set_num_threads(cores)
        together = _step_seconds(task, params, hp, data)
    except _TooLittleData as short:
        return Choice(1, cores, f"too few examples to measure a trial ({short} needed): 1 process")
    finally:
        torch.set_num_threads(before)
    speedup = alone / together  # what all cores' threads gain over one, on one trial
    jobs = min(cores, max(1, trials))
    if speedup < cores and jobs > 1:
        return Choice(
            jobs,
            max(1, cores // jobs),
            f"{cores} threads train a step {speedup:.1f}× as fast as one: "
            f"{jobs} processes of {max(1, cores // jobs)} thread(s)",
        )
    return Choice(
        1, cores, f"{cores} threads train a step {speedup:.1f}× as fast as one: 1 process"
    )


def _gpu(
    task: Any,
    params: dict[str, Any],
    hp: Any,
    data: TrainingData,
    device: torch.device,
    cores: int,
    trials: int,
) -> Choice:
    torch.cuda.reset_peak_memory_stats(device)
    try:
        small = _step_seconds(task, params, hp, data)
        peak = torch.cuda.max_memory_allocated(device)
        factor = 4 if 4 * (hp.batch_size * PROBE_STEPS + 2) <= data.n_train else 2
        large = _step_seconds(
            task, params, dataclasses.replace(hp, batch_size=factor * hp.batch_size), data
        )
    except _TooLittleData as short:
        return Choice(1, cores, f"too few examples to measure a trial ({short} needed): 1 process")
    device_time = max(1e-9, (large - small) / (factor - 1))  # c·b
    busy = min(1.0, device_time / small)
    free, _ = torch.cuda.mem_get_info(device)
    by_memory = max(1, math.floor(free * (1 - MEMORY_SPARE) / max(peak, 1)))
    by_busy = max(1, math.ceil(1 / busy))
    jobs = max(1, min(by_busy, by_memory, cores, MAX_GPU_PROCESSES, trials))
    return Choice(
        jobs,
        max(1, cores // jobs),
        f"a step keeps the GPU busy {100 * busy:.0f} % of its time, a trial peaks at "
        f"{peak / 2**20:.0f} MiB of {free / 2**20:.0f} MiB free: {jobs} processes",
    )


def _step_seconds(task: Any, params: dict[str, Any], hp: Any, data: TrainingData) -> float:
    """Seconds per training step of a fresh model of ``params``, as `fit` runs them: on
    `PROBE_STEPS` batches of ``data``, after an untimed pass over them."""
    n = hp.batch_size * PROBE_STEPS + 2
    if n > data.n_train:
        raise _TooLittleData(n)
    probe = DeviceData.from_split(
        Split(*data.examples(n)), val_fraction=0.01, seed=0, device=data.device
    )
    speeds = []
    for _ in range(2):  # the first pass picks kernels and fills caches
        torch.manual_seed(0)
        history = fit(task.build_model(params), probe, hp, epochs=1, seed=0)
        speeds.append(history[-1].images_per_second)
    return hp.batch_size / speeds[-1]


class _TooLittleData(Exception):
    def __init__(self, n: int) -> None:
        super().__init__(f"{n} training examples")
