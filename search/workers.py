"""Worker processes: each runs the study's one trial loop (`search.target`) until the target is met.

`search run --jobs N` and `search worker --jobs N` both come here with one `Plan`, resolved once
by `search.runner`: worker 0 runs in the calling process (it shows the progress bar, and reuses the
study and data already opened there) and workers 1..N-1 as spawned processes, each given the same
plan. They share nothing but the storage: Optuna hands each its own trials, TPE's constant liar
keeps them from sampling the same point, SQLite (in WAL mode, with a busy timeout) serializes
their writes, and the claim at the target (`search.claims`) keeps any number of them, in any
number of commands, from running past it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from tqdm import tqdm

from search import promotion, target
from search import study as studies
from search.contract import TrainingData
from search.errors import SearchError, SettingsError
from search.fused_trials import FusedGroups
from search.objective import Objective
from search.own_objective import OwnObjective
from search.progress import TrialLog
from search.rungs import Halving, Noise
from search.spaces import Space
from search.tasks import Task, placement
from search.trackers import Targets, open_trackers
from search.train import pick_device


@dataclass(frozen=True)
class Plan:
    """A study's trials as every worker runs them, resolved once and pickled as it is into each
    spawned worker (the space and task cross whole: see `Task.__reduce_ex__` for the user's data)."""

    study: str
    url: str
    space: Space
    task: Task
    fixed: dict[str, Any]  # sampler, pruner, seed, epochs, objectives, reports per epoch: fixed
    target: int  # finished trials the study is to have
    devices: tuple[str | None, ...]  # one per worker
    data_mode: str  # resident or stream, decided once for all workers
    data_dir: Path  # a registered task's files
    heartbeat: int
    timeout: float | None
    threads: int  # torch threads per worker (`search.capacity.threads_per_worker`)
    show_trials: bool = True
    step: str = "auto"  # eager or captured steps (`search.step`)
    fuse: int = 1  # trials trained together (`search.fused_trials`)
    checkpoint_dir: Path = studies.STUDIES_DIR / "checkpoints"
    salt: int = 0  # tells apart the sampler seeds of workers on different machines
    reconnect_timeout: float = 300.0  # seconds to keep retrying a storage that stopped answering
    trackers: Targets = field(
        default_factory=Targets
    )  # TensorBoard and MLflow, if the study has them


def devices(device: str | None, gpus: list[int] | None, jobs: int) -> list[str | None]:
    """The device of each worker: round-robin over ``gpus`` (several workers per GPU allowed)."""
    if not gpus:
        return [device] * jobs
    if device is not None:
        raise SettingsError(f"--device {device} and --gpus: name the GPUs with --gpus only")
    return [f"cuda:{gpus[i % len(gpus)]}" for i in range(jobs)]


def run_all(
    plan: Plan, study: optuna.Study | None = None, first_data: TrainingData | None = None
) -> None:
    """Run worker 0 here (on ``study`` and ``first_data`` if given) and the rest as spawned
    processes; wait for all of them."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be shared with a forked child
    others = [
        context.Process(target=_child, args=(plan, index), daemon=False)
        for index in range(1, len(plan.devices))
    ]
    with _main_module_not_rerun():
        for process in others:
            process.start()
    try:
        work(plan, 0, study=study, data=first_data, show_bar=True)
    except BaseException:
        for process in others:
            process.terminate()  # SIGTERM: each child stops like Ctrl-C, its trial left retryable
        raise
    finally:
        for process in others:
            process.join()
    failed = [(i, p.exitcode) for i, p in enumerate(others, start=1) if p.exitcode]
    if failed:
        index, code = failed[0]
        raise SearchError(f"worker {index} exited with status {code}; rerun to retry its trials")


@contextlib.contextmanager
def _main_module_not_rerun() -> Iterator[None]:
    """Spawned processes run the parent's ``__main__`` file again, so that objects pickled by
    reference to it are found; a program read from standard input (``python -``, ``<stdin>``)
    has no file to run, and the objects it gives cross by value anyway (`search.given`)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or Path(path).is_file():
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def work(
    plan: Plan,
    index: int,
    *,
    study: optuna.Study | None = None,
    data: TrainingData | None = None,
    show_bar: bool = False,
) -> None:
    """Worker ``index``: run trials on the study until it has its target."""
    torch.set_num_threads(plan.threads)
    device = pick_device(plan.devices[index])
    fixed = plan.fixed
    if data is None and plan.task.train is None:
        data = placement.load_data(
            plan.task,
            plan.space,
            seed=fixed["seed"],
            device=device,
            mode=plan.data_mode,
            data_dir=plan.data_dir,
        )
    name = f"worker {index}"

    def connect() -> optuna.Study:
        storage = studies.open_storage(plan.url, create=False, heartbeat=plan.heartbeat)
        return optuna.load_study(study_name=plan.study, storage=storage)

    # A worker that joins a shared study rides out a database restart from its first step.
    if study is None:
        study = target.retrying(
            connect, url=plan.url, name=name, reconnect_timeout=plan.reconnect_timeout
        )
    trials_so_far = len(study.get_trials(deepcopy=False))
    study.sampler = studies.make_sampler(
        fixed["sampler"],
        studies.sampler_seed(fixed["seed"], index, trials_so_far, plan.salt),
        conditional=plan.space.has_conditions,
        trials=plan.target,
    )
    reports_per_epoch = fixed["reports_per_epoch"]
    study.pruner = make_pruner(plan, data)
    decide = None
    if isinstance(study.pruner, Halving):
        study.sampler = promotion.OnRungs(study.sampler, study.pruner)
        pruner = study.pruner

        def decide(study: optuna.Study) -> bool:
            return promotion.decide(study, pruner)

    with (
        open_trackers(plan.trackers, plan.study, _metric(plan), echo=_warn) as tracker,
        TrialLog(
            total=plan.target,
            done=studies.count_finished(study),
            show_bar=show_bar and plan.show_trials,
            show_lines=plan.show_trials,
            metric=_metric(plan),
        ) as log,
    ):
        objective: Callable[[optuna.Trial], Any]
        if plan.task.train is not None:
            if device.type == "cuda":
                torch.cuda.set_device(device)  # the function's "cuda" is this worker's GPU
            objective = OwnObjective(
                plan.space,
                plan.task,
                epochs=fixed["epochs"],
                seed=fixed["seed"],
                device=device,
                checkpoint_dir=plan.checkpoint_dir / plan.study,
                tracker=tracker,
            )
        else:
            objective = Objective(
                plan.space,
                plan.task,
                data,
                epochs=fixed["epochs"],
                seed=fixed["seed"],
                checkpoint_dir=plan.checkpoint_dir / plan.study,
                objectives=tuple(fixed.get("objectives", "accuracy").split(",")),
                reports_per_epoch=reports_per_epoch,
                tracker=tracker,
                step=plan.step,
            )
        callbacks = [log, tracker] if tracker.trackers else [log]
        group = None
        if plan.fuse > 1 and isinstance(objective, Objective):
            group = FusedGroups(objective, plan.fuse, plan.target, callbacks)
        target.run_until_target(
            study,
            objective,
            target=plan.target,
            url=plan.url,
            poll=min(plan.heartbeat, 1.0),
            requeue_every=plan.heartbeat,
            timeout=plan.timeout,
            reconnect_timeout=plan.reconnect_timeout,
            callbacks=callbacks,
            name=name,
            decide=decide,
            group=group,
        )


def _metric(plan: Plan) -> studies.Metric:
    return studies.Metric(plan.task.scoring.metric_name, plan.task.scoring.direction)


def make_pruner(plan: Plan, data: TrainingData | None) -> optuna.pruners.BasePruner:
    """The study's pruner; successive halving that promotes is told the study's target, its
    validation set's noise and where paused trials keep their state."""
    fixed = plan.fixed
    pruner = studies.make_pruner(fixed["pruner"], fixed["epochs"], fixed["reports_per_epoch"])
    if isinstance(pruner, Halving):
        pruner.target = plan.target
        pruner.noise = validation_noise(data, plan.task)
        pruner.checkpoint_dir = plan.checkpoint_dir / plan.study
    return pruner


def validation_noise(data: TrainingData | None, task: Task) -> Noise | None:
    """How finely the validation split resolves an accuracy; None for other metrics."""
    if data is None or task.scoring.metric_name != "accuracy":
        return None
    labels = torch.cat([y.reshape(-1).cpu() for _, y in data.val_batches(4096)])
    if labels.numel() == 0 or labels.is_floating_point():
        return None
    chance = torch.bincount(labels).max().item() / labels.numel()
    return Noise(labels.numel(), chance)


def _warn(line: str) -> None:
    tqdm.write(line, file=sys.stderr)  # above the progress bar, from any thread


def _child(plan: Plan, index: int) -> None:
    # Stopped by the parent (SIGTERM) or Ctrl-C in the terminal (SIGINT to the whole group):
    # either way the running trial is marked interrupted, and the next run retries it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        work(plan, index)
    except KeyboardInterrupt:
        pass  # the parent reports the interruption once
