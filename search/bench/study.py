"""`search bench study`: one whole study on the harness's loop and again on the reference loop.

Both studies get the same space, data, validation split, TPE sampler seed and median pruner, in
one process and one run, each in its own fresh SQLite file; they differ only in the training loop
(`search.train.fit`, or the tutorial-style loop of `search.bench.loop.reference_fit`). The wall
times and their ratio are printed, and so is each study's harness overhead: the wall time outside
its trials' own measured seconds, as a share; and its bookkeeping per trial, measured where it
happens (`search.bench.bookkeeping`): sampling, storage (with its round trips) and pruning, inside
trials (per-epoch reports) and between them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from search import spaces, target
from search import study as studies
from search.bench.bookkeeping import Bookkeeping, Meter
from search.bench.loop import pil_readable, reference_fit
from search.errors import SettingsError
from search.fused_trials import FusedGroups
from search.objective import Objective
from search.tasks import placement, resolve
from search.train import fit, pick_device

HEARTBEAT = 10  # seconds, as `search run` records trials' heartbeats by default


@dataclass(frozen=True)
class StudySettings:
    space: str = "digits"
    trials: int = 100
    epochs: int | None = None
    seed: int = 0
    device: str | None = None
    data_dir: Path = Path("data")
    reference: bool = True  # also run the study on the reference loop, and compare
    step: str = "auto"  # the harness's steps: eager or captured (`search.step`)
    fuse: int = 1  # the harness's trials fused K at a time (`search.fused_trials`)


@dataclass(frozen=True)
class StudyTiming:
    loop: str
    wall_seconds: float
    trial_seconds: float
    best: float
    bookkeeping: Bookkeeping

    @property
    def overhead(self) -> float:
        return max(0.0, self.wall_seconds - self.trial_seconds) / self.wall_seconds

    @property
    def bookkeeping_share(self) -> float:
        """Sampling, storage and pruning (inside trials and between them) as a share of wall."""
        return self.bookkeeping.total_ms * self.bookkeeping.trials / 1000 / self.wall_seconds


def run(settings: StudySettings, echo: Any = print) -> list[StudyTiming]:
    if settings.trials < 1:
        raise SettingsError(f"--trials must be at least 1, got {settings.trials}")
    if settings.fuse < 1:
        raise SettingsError(f"--fuse must be at least 1, got {settings.fuse}")
    space = spaces.load(settings.space)
    task = resolve.resolve(space, data_dir=settings.data_dir)
    device = pick_device(settings.device)
    # The reference loop reads the resident tensors back as PIL images: both studies use them.
    data = placement.load_data(
        task, space, seed=settings.seed, device=device, mode="resident", data_dir=settings.data_dir
    )
    if isinstance(data.train_x, tuple) or not pil_readable(data.train_x):
        raise SettingsError(
            f"--space {settings.space}: task {task.name} has no PIL-readable images"
        )
    if task.scoring.own_loss or task.scoring.kind != "classification":
        raise SettingsError(
            f"--space {settings.space}: the reference loop trains classification with "
            "cross-entropy; this task is scored otherwise"
        )
    epochs = settings.epochs or space.epochs
    metric = studies.Metric(task.scoring.metric_name, task.scoring.direction)
    echo(
        f"bench study: {settings.trials} trials of {space.source} (task {task.name}, up to "
        f"{epochs} epochs, TPE + median pruning, seed {settings.seed}) on {device}"
        + (", twice" if settings.reference else ", the harness's loop only")
    )
    folder = Path(tempfile.mkdtemp(prefix="search-bench-study-"))
    timings = []
    try:
        loops = [("harness", fit), ("reference", reference_fit)][: 2 if settings.reference else 1]
        for loop, train in loops:
            url = f"sqlite:///{folder / loop}.db"
            meter = Meter()
            study = optuna.create_study(
                storage=studies.open_storage(url, create=True, heartbeat=HEARTBEAT),
                study_name=loop,
                direction=task.scoring.direction,
                sampler=studies.make_sampler(
                    "tpe",
                    studies.sampler_seed(settings.seed, 0, 0),
                    conditional=space.has_conditions,
                ),
                pruner=studies.make_pruner("median", epochs),
            )
            meter.attach(study)
            objective = Objective(
                space, task, data, epochs=epochs, seed=settings.seed, train=train,
                step=settings.step if loop == "harness" else "eager",
            )  # fmt: skip
            group = None
            if loop == "harness" and settings.fuse > 1:
                group = FusedGroups(objective, settings.fuse, settings.trials)
            start = time.perf_counter()
            # The loop `search run` runs: claims at the target, requeues, heartbeats and all.
            try:
                target.run_until_target(
                    study, objective, target=settings.trials, url=url, requeue_every=HEARTBEAT,
                    group=group,
                )  # fmt: skip
            finally:
                meter.detach()
            wall = time.perf_counter() - start
            trials = study.get_trials(deepcopy=False)
            timing = StudyTiming(
                loop if loop == "reference" else _harness_name(settings, trials),
                wall,
                sum(studies.trial_attrs(t).get("seconds", 0.0) for t in trials),
                metric.best(r for t in trials if (r := studies.trial_result(t, metric)) is not None)
                or 0.0,
                meter.result(len(trials)),
            )
            echo(f"  {format_timing(timing)}")
            timings.append(timing)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not settings.reference:
        return timings
    harness, reference = timings
    echo(
        f"the harness ran the study {reference.wall_seconds / harness.wall_seconds:.2f}× as fast "
        f"as the reference loop ({harness.wall_seconds:.1f} s against {reference.wall_seconds:.1f} s)"
    )
    return timings


def _harness_name(settings: StudySettings, trials: list[optuna.trial.FrozenTrial]) -> str:
    """``harness``, with how its steps ran (``graph``, ``compiled``) and ``fused ×K`` if fused."""
    ran = {studies.trial_attrs(t).get("step", "eager") for t in trials} - {"eager"}
    name = "harness" + "".join(f" {r}" for r in sorted(ran))
    return name + (f" fused ×{settings.fuse}" if settings.fuse > 1 else "")


def write_json(path: Path, timings: list[StudyTiming]) -> None:
    """Both studies' timings and the harness's speed-up over the reference loop."""
    rows = [
        {**asdict(t), "overhead": t.overhead, "bookkeeping_share": t.bookkeeping_share}
        for t in timings
    ]
    payload: dict[str, Any] = {"studies": rows}
    if len(timings) == 2:
        payload["speedup"] = timings[1].wall_seconds / timings[0].wall_seconds
    path.write_text(json.dumps(payload, indent=2) + "\n")


def format_timing(timing: StudyTiming) -> str:
    costs = timing.bookkeeping
    return (
        f"{timing.loop:<9} wall {timing.wall_seconds:7.1f} s, in trials {timing.trial_seconds:7.1f} s, "
        f"overhead {100 * timing.overhead:4.1f} %, best val metric {timing.best:.4f}\n"
        f"            bookkeeping {costs.total_ms:5.1f} ms per trial "
        f"({100 * timing.bookkeeping_share:4.1f} % of wall): sampling {costs.sampling_ms:.1f}, "
        f"storage {costs.storage_ms:.1f} ({costs.round_trips:.0f} round trips: "
        f"{costs.statements:.0f} statements, {costs.commits:.0f} commits), pruning "
        f"{costs.pruning_ms:.1f}"
    )
