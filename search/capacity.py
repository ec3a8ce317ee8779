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
  time c·b; timing batches b and 4b (with the study's step: captured or eager) gives both, and a
  fused group of K pays L once for K·c·b of work, so (L + K·c·b)/(K·c·b) processes fill the GPU,
  capped by its free memory over what a process needs (the data, and K trials at the measured
  trial's peak; a fifth spare), by the cores (each process needs one to launch from) and by
  `MAX_GPU_PROCESSES`.

``--fuse auto`` picks K from the same measurement: on a GPU, (L + c·b)/(c·b) trials, enough that
their work covers one launch time (within memory and `MAX_FUSE`); on the CPU, which has no launch
gaps to fill, 1.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search.contract import Hyperparameters, TrainingData, split_params
from search.errors import SettingsError
from search.step import resolve_mode
from search.tasks import Split
from search.tasks.data import DeviceData
from search.train import fit

MAX_GPU_PROCESSES = 8
MAX_FUSE = 16  # trials in one fused group that `--fuse auto` picks at most
PROBE_STEPS = 12  # timed steps per measurement (a captured step's first 3 warm up, the 4th
# captures), after an untimed pass over the same batches
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
    """What `--jobs auto` and `--fuse auto` picked, and why (``reason``: one line for the user)."""

    jobs: int
    threads: int
    reason: str
    fuse: int = 1  # trials per fused group: what `--fuse` gave, or what auto picked


def choose(
    task: Any,
    space: Any,
    data: TrainingData,
    device: torch.device,
    trials: int,
    *,
    step: str = "eager",
    fuse: int | str = 1,
) -> Choice:
    """Worker processes and threads for a study of ``trials`` on ``device`` whose trials run
    ``step`` steps, ``fuse`` at a time (or as many as fill the GPU: ``auto``), from a short
    measured trial of the space's largest configuration (see the module docstring)."""
    extremes = space.extreme_configurations()
    # Every param at its high end (all low where there is no other): the deepest model, the
    # largest batch.
    params = extremes[min(1, len(extremes) - 1)]
    _, model_params = split_params(params)
    # Its optimizer and recipe, but the default rate: a high-end rate can diverge, and a step
    # costs the same at any rate.
    recipe = space.hyperparameters(params)
    hp = dataclasses.replace(recipe, lr=Hyperparameters().lr, lr_schedule="constant", warmup=0.0)
    return choose_for(task, model_params, hp, data, device, trials, step=step, fuse=fuse)


def choose_for(
    task: Any,
    params: dict[str, Any],
    hp: Hyperparameters,
    data: TrainingData,
    device: torch.device,
    trials: int,
    *,
    step: str = "eager",
    fuse: int | str = 1,
) -> Choice:
    """`choose`, measured on the model of ``params`` trained with ``hp``."""
    probe = _Probe(task, params, data, step)
    cores = usable_cores()
    if device.type == "cuda":
        return _gpu(probe, hp, device, cores, trials, fuse)
    choice = _cpu(probe, hp, cores, trials)
    if fuse != "auto":
        return dataclasses.replace(choice, fuse=int(fuse))
    # A fused group fills launch gaps, and the CPU has none: its batched convolutions ran
    # slower than K separate ones (docs/performance.md).
    return dataclasses.replace(choice, reason=f"{choice.reason}; on the CPU, trials unfused")


def _cpu(probe: _Probe, hp: Hyperparameters, cores: int, trials: int) -> Choice:
    if cores == 1:
        return Choice(1, 1, "one usable core")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = probe.seconds_per_step(hp)
        torch.set_num_threads(cores)
        together = probe.seconds_per_step(hp)
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
    probe: _Probe,
    hp: Hyperparameters,
    device: torch.device,
    cores: int,
    trials: int,
    fuse: int | str,
) -> Choice:
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)  # the data, already on the GPU
    try:
        small = probe.seconds_per_step(hp)
        peak = torch.cuda.max_memory_allocated(device)
        factor = 4 if probe.fits(4 * hp.batch_size) else 2
        large = probe.seconds_per_step(dataclasses.replace(hp, batch_size=factor * hp.batch_size))
    except _TooLittleData as short:
        return Choice(1, cores, f"too few examples to measure a trial ({short} needed): 1 process")
    device_time = max(1e-9, (large - small) / (factor - 1))  # c·b, a trial's own work
    launch = max(0.0, small - device_time)  # L, which a fused group of K pays once
    free, _ = torch.cuda.mem_get_info(device)
    trial_memory = max(peak - before, 1)  # one trial's own: its model, optimizer, activations
    if fuse == "auto":
        # Enough trials that their work covers the launch time, within memory and MAX_FUSE.
        fits = math.floor((free * (1 - MEMORY_SPARE) - before) / trial_memory)
        fuse = max(1, min(math.ceil((launch + device_time) / device_time), MAX_FUSE, fits))
    fuse = int(fuse)
    busy = min(1.0, fuse * device_time / (launch + fuse * device_time))
    # Each process holds the data and a group of `fuse` trials at this trial's peak.
    need = before + fuse * trial_memory
    by_memory = max(1, math.floor(free * (1 - MEMORY_SPARE) / need))
    by_busy = max(1, math.ceil(1 / busy))
    jobs = max(1, min(by_busy, by_memory, cores, MAX_GPU_PROCESSES, math.ceil(trials / fuse)))
    group = f" in groups of {fuse}" if fuse > 1 else ""
    return Choice(
        jobs,
        max(1, cores // jobs),
        f"{probe.step} steps{group} keep the GPU busy {100 * busy:.0f} % of the time, a "
        f"process needs {need / 2**20:.0f} MiB of {free / 2**20:.0f} MiB free: {jobs} process"
        + ("es" if jobs > 1 else ""),
        fuse,
    )


class _Probe:
    """Times training steps of a fresh model of ``params`` on a few batches of ``data``."""

    def __init__(self, task: Any, params: dict[str, Any], data: TrainingData, step: str) -> None:
        self.task, self.params, self.data = task, params, data
        self.step = resolve_mode(step, data.device)

    def fits(self, batch_size: int) -> bool:
        """Whether the data holds `PROBE_STEPS` batches of ``batch_size``."""
        return batch_size * PROBE_STEPS + 2 <= self.data.n_train

    def seconds_per_step(self, hp: Hyperparameters) -> float:
        """Seconds per step as `fit` runs them with this step mode: on up to `PROBE_STEPS`
        batches (at least 2), after an untimed pass over them."""
        steps = min(PROBE_STEPS, self.data.n_train // hp.batch_size)
        if steps < 2:
            raise _TooLittleData(2 * hp.batch_size)
        # A hundredth of the probe's examples is held out for its one evaluation.
        n = min(self.data.n_train, steps * hp.batch_size + max(2, steps * hp.batch_size // 50))
        probe = DeviceData.from_split(
            Split(*self.data.examples(n)), val_fraction=0.01, seed=0, device=self.data.device
        )
        speeds = []
        for _ in range(2):  # the first pass picks kernels and fills caches
            torch.manual_seed(0)
            model = self.task.build_model(self.params)
            history = fit(model, probe, hp, epochs=1, seed=0, step=self.step)
            speeds.append(history[-1].images_per_second)
        return hp.batch_size / speeds[-1]


class _TooLittleData(Exception):
    def __init__(self, n: int) -> None:
        super().__init__(f"{n} training examples")
