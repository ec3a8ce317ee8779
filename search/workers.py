"""Worker processes: each opens the study's storage and runs trials until the target is met.

`search run --jobs N` runs worker 0 in the calling process (it shows the progress bar) and workers
1..N-1 as spawned processes. They share nothing but the storage: Optuna hands each its own trials,
TPE's constant liar keeps them from sampling the same point, and SQLite (in WAL mode, with a busy
timeout) serializes their writes. The trials still to run are split into one quota per worker, so
`--trials N` stays exactly N finished trials however many workers run; a worker that dies leaves
its share to the next run (see `search.runner`).

`search worker` shares its study with workers on other machines, so no quota can be known in
advance: its processes run trials until the study reaches its target (see `search.target`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from search import spaces, target
from search import study as studies
from search.errors import SearchError, SettingsError, TrialFailure
from search.objective import Objective
from search.progress import TrialLog
from search.tasks import placement, resolve
from search.train import TrainingData, pick_device


@dataclass(frozen=True)
class Worker:
    """Everything one worker needs, in a form that crosses a process boundary."""

    study: str
    url: str
    space: dict[str, Any]
    space_name: str
    space_dir: str  # what the space's paths are relative to
    data_cache: str | None  # the user's data, decoded once by the command that started this
    data_mode: str  # resident or stream, decided once for all workers
    fixed: dict[str, Any]  # sampler, pruner, seed, epochs, objectives
    trials: int  # this worker's quota
    target: int  # the study's, for the progress bar
    device: str | None
    data_dir: Path
    download: bool
    heartbeat: int
    timeout: float | None
    index: int = 0
    threads: int | None = None
    show_trials: bool = True
    checkpoint_dir: Path = studies.STUDIES_DIR / "checkpoints"
    until_target: bool = False  # run trials while the study is short of `target` (search worker)
    salt: int = 0  # tells apart the sampler seeds of workers on different machines
    reconnect_timeout: float = 300.0  # seconds to keep retrying a storage that stopped answering


def devices(device: str | None, gpus: list[int] | None, jobs: int) -> list[str | None]:
    """The device of each worker: round-robin over ``gpus`` (several workers per GPU allowed)."""
    if not gpus:
        return [device] * jobs
    if device is not None:
        raise SettingsError(f"--device {device} and --gpus: name the GPUs with --gpus only")
    return [f"cuda:{gpus[i % len(gpus)]}" for i in range(jobs)]


def run_all(workers: list[Worker], first_data: TrainingData | None = None) -> None:
    """Run ``workers[0]`` here and the rest as spawned processes; wait for all of them."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be shared with a forked child
    others = [context.Process(target=_child, args=(w,), daemon=False) for w in workers[1:]]
    for process in others:
        process.start()
    try:
        work(workers[0], first_data, show_bar=True)
    except BaseException:
        for process in others:
            process.terminate()  # SIGTERM: each child stops like Ctrl-C, its trial left retryable
        raise
    finally:
        for process in others:
            process.join()
    failed = [(w.index, p.exitcode) for w, p in zip(workers[1:], others) if p.exitcode]
    if failed:
        index, code = failed[0]
        raise SearchError(f"worker {index} exited with status {code}; rerun to retry its trials")


def work(worker: Worker, data: TrainingData | None = None, *, show_bar: bool = False) -> None:
    """Run this worker's quota of trials on the study."""
    if worker.threads is not None:
        torch.set_num_threads(worker.threads)
    space = spaces.from_data(
        worker.space,
        name=worker.space_name,
        source=f"study {worker.study}",
        base_dir=Path(worker.space_dir),
    )
    task = resolve.resolve(
        space,
        data_dir=worker.data_dir,
        download=worker.download,
        cache=None if worker.data_cache is None else Path(worker.data_cache),
    )
    device = pick_device(worker.device)
    fixed = worker.fixed
    if data is None:
        data = placement.load_data(
            task,
            space,
            seed=fixed["seed"],
            device=device,
            mode=worker.data_mode,
            data_dir=worker.data_dir,
            download=worker.download,
        )

    def connect() -> optuna.Study:
        storage = studies.open_storage(worker.url, create=False, heartbeat=worker.heartbeat)
        study = optuna.load_study(study_name=worker.study, storage=storage)
        study.sampler = studies.make_sampler(
            fixed["sampler"],
            studies.sampler_seed(
                fixed["seed"], worker.index, len(study.get_trials(deepcopy=False)), worker.salt
            ),
            conditional=space.has_conditions,
        )
        return study

    # A worker that joins a shared study rides out a database restart from its first step.
    if worker.until_target:
        study = target.retrying(
            connect,
            url=worker.url,
            name=f"worker {worker.index}",
            reconnect_timeout=worker.reconnect_timeout,
        )
    else:
        study = connect()
    study.pruner = studies.make_pruner(fixed["pruner"], fixed["epochs"])
    objective = Objective(
        space,
        task,
        data,
        epochs=fixed["epochs"],
        seed=fixed["seed"],
        checkpoint_dir=worker.checkpoint_dir / worker.study,
        objectives=tuple(fixed.get("objectives", "accuracy").split(",")),
    )
    done = studies.count_finished(study)
    with TrialLog(
        total=worker.target,
        done=done,
        show_bar=show_bar and worker.show_trials,
        show_lines=worker.show_trials,
    ) as log:
        if worker.until_target:
            target.run_until_target(
                study,
                objective,
                target=worker.target,
                url=worker.url,
                poll=min(worker.heartbeat, 5),
                timeout=worker.timeout,
                reconnect_timeout=worker.reconnect_timeout,
                callbacks=[log],
                name=f"worker {worker.index}",
            )
            return
        study.optimize(
            objective,
            n_trials=worker.trials,
            timeout=worker.timeout,
            catch=(TrialFailure,),
            callbacks=[log],
        )


def quotas(remaining: int, jobs: int) -> list[int]:
    """``remaining`` trials split as evenly as can be over ``jobs`` workers (none idle at start)."""
    jobs = min(jobs, remaining)
    return [remaining // jobs + (i < remaining % jobs) for i in range(jobs)]


def _child(worker: Worker) -> None:
    # Stopped by the parent (SIGTERM) or Ctrl-C in the terminal (SIGINT to the whole group):
    # either way the running trial is marked interrupted, and the next run retries it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        work(worker)
    except KeyboardInterrupt:
        pass  # the parent reports the interruption once


def threads_per_worker(jobs: int, device: torch.device) -> int | None:
    """CPU workers split the cores between them; GPU workers keep torch's default."""
    if jobs == 1 or device.type == "cuda":
        return None
    return max(1, (os.cpu_count() or 1) // jobs)
