"""`search run` and `search worker`: resolve the settings once into a `search.workers.Plan`, check
everything, create or resume the study, and hand the plan to the workers.

This is the one place settings are read: the space is loaded and validated, the task resolved, the
data placed and the study opened here, once; the plan that comes out crosses into every worker
process as it is, and `search.workers` runs the one trial loop of `search.target` on it. All checks
(space, task, data, sampler, pruner, storage, a resumed study's stored settings) happen before a
study is created or changed, so bad input never leaves a half-made study behind.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search import capacity, claims, given, promotion, spaces, trackers, warm_start, workers
from search import study as studies
from search.contract import TrainingData
from search.errors import SettingsError, SpaceError, StorageError
from search.given import Given
from search.rungs import Halving
from search.spaces import Space
from search.step import STEP_MODES
from search.tasks import Task, placement, resolve
from search.tasks.data import can_augment
from search.tasks.models import shape_text
from search.train import pick_device

# Search settings fixed when a study is created; a resume that names a different one is refused.
FIXED_SETTINGS = ("sampler", "pruner", "seed", "epochs", "objectives", "reports_per_epoch")
# For studies created before the setting existed.
DEFAULTS = {"objectives": "accuracy", "reports_per_epoch": 1}
# What a study records of its task's scoring, beside its search settings.
SCORING_SETTINGS = ("kind", "metric", "direction")
# A new study's search strategy when `search run` names none: what won the benchmarks
# (docs/benchmarks.md: TPE with Optuna's successive halving from a quarter epoch). Halving that
# promotes is cheaper on MNIST-1D but lost on a CIFAR-shaped task, where early ranks mislead.
DEFAULT_SAMPLER, DEFAULT_PRUNER, DEFAULT_REPORTS_PER_EPOCH = "tpe", "sha", 4
MAX_REPORTS_PER_EPOCH = 100
SETTLE_SECONDS = 5.0  # how long a study with no settings yet may be another command's, creating it


@dataclass(frozen=True)
class RunSettings:
    """What `search run` was asked; None means "the study's stored value, or the default"."""

    trials: int
    study: str | None = None
    space: str | dict[str, Any] | None = None  # a file or name, TOML text, or a dict (Python)
    storage: str | None = None
    sampler: str | None = None
    pruner: str | None = None
    epochs: int | None = None
    seed: int | None = None
    timeout: float | None = None
    device: str | None = None
    data_dir: Path = Path("data")
    download: bool = False
    heartbeat: int = 10
    jobs: int | str = 1  # or "auto": measured (`search.capacity`)
    threads: int | None = None  # torch threads per worker (default: the cores split between them)
    step: str = "auto"  # eager or captured training steps (`search.step`)
    fuse: int | str = 1  # trials trained together as one model, or "auto" (`search.fused_trials`)
    gpus: tuple[int, ...] = ()
    objectives: str | None = None  # comma-separated names from `search.study.OBJECTIVES`
    reports_per_epoch: int | None = None  # validation reports (and pruning decisions) per epoch
    checkpoint_dir: Path = studies.STUDIES_DIR / "checkpoints"  # shared by all workers of a study
    quiet: bool = False  # no line per trial, no progress bar (benchmarks print their own)
    data_mode: str = "auto"  # resident on the device, streamed from the host, or auto by size
    tensorboard: Path | None = None  # a run per trial under DIR/STUDY (stored on the study)
    mlflow: str | None = None  # a tracking URI: the study's run, a nested run per trial (stored)
    warm_start: tuple[str, ...] = ()  # studies whose best configurations a new study begins with
    warm_start_storage: str | None = None  # where they are (default: each one's own SQLite file)
    # Objects from Python (`search.run`), which the space stands for with markers (search.given);
    # the command line names files in the space instead.
    model: Any = None
    data: Any = None
    train: Any = None

    @property
    def objects(self) -> Given:
        return Given(self.model, self.data, self.train)


@dataclass(frozen=True)
class RunResult:
    study: optuna.Study
    storage_url: str
    finished_before: int
    finished: int
    seconds: float

    @classmethod
    def since(cls, study: optuna.Study, url: str, finished_before: int, start: float) -> RunResult:
        """The study's state now, against its finished count and the clock at ``start``."""
        return cls(
            study, url, finished_before, studies.count_finished(study), time.perf_counter() - start
        )


@dataclass(frozen=True)
class _Prepared:
    plan: workers.Plan
    study: optuna.Study
    data: TrainingData | None  # worker 0's, placed while checking (None: a training function)
    device: Any  # worker 0's


def run(settings: RunSettings, echo: Callable[[str], None] = print) -> RunResult:
    """Run trials until the study has ``settings.trials`` finished ones, resuming it if it exists;
    alongside any other `search run` or `search worker` on the same study.

    ``--trials 0`` creates the study and runs nothing (for `search worker` to join).
    """
    ready = _prepare(settings, echo, may_create=True)
    study, name = ready.study, ready.study.study_name
    studies.requeue_unfinished(study)  # trials of dead or interrupted workers run again first
    pruner = workers.make_pruner(ready.plan, ready.data)
    continuing = 0  # continuations of paused trials still to run: work left of counted trials
    if isinstance(pruner, Halving) and settings.trials:
        promotion.decide(study, pruner)  # a rung that a crash left undecided
        continuing = claims.counts(study).continuing
    finished_before = studies.count_finished(study)
    start = time.perf_counter()
    if settings.trials == 0:
        echo(f"study {name} is ready: search worker --study {name} --trials N joins it")
    elif finished_before >= settings.trials and continuing:
        echo(
            f"resuming study {name}: {finished_before} of {settings.trials} trials finished, "
            f"{continuing} promoted one(s) to continue"
        )
        workers.run_all(ready.plan, study=study, first_data=ready.data)
    elif finished_before >= settings.trials:
        echo(
            f"study {name} already has {finished_before} finished trials "
            f"(target {settings.trials}); nothing to run"
        )
    else:
        verb = "resuming" if finished_before else "running"
        jobs = len(ready.plan.devices)
        where = f"{jobs} workers" if jobs > 1 else str(ready.device)
        echo(
            f"{verb} study {name}: {finished_before} of {settings.trials} trials finished, "
            f"running {settings.trials - finished_before} more on {where}"
        )
        workers.run_all(ready.plan, study=study, first_data=ready.data)
    return _finish(ready.plan, RunResult.since(study, ready.plan.url, finished_before, start))


def join(settings: RunSettings, echo: Callable[[str], None] = print) -> RunResult:
    """`search worker`: run trials on an existing study until it has ``settings.trials`` finished,
    alongside any number of workers elsewhere on the same storage."""
    if settings.trials < 1:
        raise SettingsError(f"--trials must be at least 1, got {settings.trials}")
    ready = _prepare(settings, echo, may_create=False)
    study, plan = ready.study, ready.plan
    finished_before = studies.count_finished(study)
    start = time.perf_counter()
    echo(
        f"joining study {study.study_name} in {studies.describe(plan.url)}: {finished_before} of "
        f"{settings.trials} trials finished; {len(plan.devices)} worker(s) on "
        + ", ".join(sorted({str(d or ready.device) for d in plan.devices}))
    )
    workers.run_all(plan, study=study, first_data=ready.data)
    return _finish(plan, RunResult.since(study, plan.url, finished_before, start))


def _finish(plan: workers.Plan, result: RunResult) -> RunResult:
    if plan.trackers.mlflow:
        from search.trackers.mlflow import end_study_run

        end_study_run(plan.trackers, complete=result.finished >= plan.target)
    return result


def _prepare(settings: RunSettings, echo: Callable[[str], None], *, may_create: bool) -> _Prepared:
    """Check everything, then load the study or (``may_create``) create it; the plan of its run."""
    _check_ranges(settings)
    name = study_name(settings)
    url = settings.storage or studies.default_url(name)
    storage, existing, stale = _load_existing(url, name, settings.heartbeat)
    if existing is None and not may_create:
        raise StorageError(
            f"no study {name} in {studies.describe(url)}; create it first with "
            f"search run --study {name} --space SPACE --storage URL --trials 0"
        )
    if existing is None and settings.study is not None and settings.space is None:
        raise StorageError(_no_such_study(name, url, settings.storage, storage))
    if existing is not None:
        space, fixed = resume_settings(existing, settings, url, _start_new(settings))
        check_objects(existing, space, settings.objects, settings.trials)
    else:
        if settings.space is None and settings.objects.items():
            raise SettingsError(
                f"search.run: no study {name} yet, and no space= to create it from; give "
                "space= (a dict, TOML text or a path) with "
                + ", ".join(f"{keyword}=" for keyword, _ in settings.objects.items())
            )
        space = spaces.load(settings.space, settings.objects)
        objectives = _objectives(settings, space)
        multi = "," in objectives
        fixed = {
            "sampler": settings.sampler or DEFAULT_SAMPLER,
            "pruner": "none" if multi else settings.pruner or DEFAULT_PRUNER,
            "seed": 0 if settings.seed is None else settings.seed,
            "epochs": settings.epochs or space.epochs,
            "objectives": objectives,
            "reports_per_epoch": settings.reports_per_epoch or DEFAULT_REPORTS_PER_EPOCH,
        }
        if space.train is not None:
            _check_own_training(settings, space)
            fixed["reports_per_epoch"] = 1  # the function's own steps are the pruner's
        if multi:
            echo(f"objectives {objectives}: pruning is off (Optuna's pruners need one objective)")
        short = studies.brackets_short_of_tpe(fixed, settings.trials)
        if short:
            echo(short)

    stored_trackers = existing.user_attrs.get(trackers.TRACKERS_ATTR) if existing else None
    targets = trackers.resolve(stored_trackers, settings.tensorboard, settings.mlflow)
    task = resolve.resolve(
        space, data_dir=settings.data_dir, download=settings.download, objects=settings.objects
    )
    if existing is not None:
        check_unchanged(existing, task, _start_new(settings))
    per_device = 1 if settings.jobs == "auto" else int(settings.jobs)
    worker_devices = workers.devices(
        settings.device, list(settings.gpus), per_device * max(1, len(settings.gpus))
    )
    for name_of_device in set(worker_devices):
        pick_device(name_of_device)  # every worker's device exists here
    device = pick_device(worker_devices[0])
    data = None
    threads = capacity.threads_per_worker(len(worker_devices), settings.threads)
    fuse = settings.fuse if isinstance(settings.fuse, int) else 1  # "auto" is measured below
    if task.train is None:  # a training function of the user's brings its own data and model
        data = placement.load_data(
            task,
            space,
            seed=fixed["seed"],
            device=device,
            mode=settings.data_mode,
            data_dir=settings.data_dir,
            download=settings.download,
            processes=worker_devices.count(worker_devices[0]),
        )
        _check_batch_sizes(space, data.n_train)
        noise = workers.validation_noise(data, task)
        if fixed["pruner"] != "none" and noise is not None and noise.too_small():
            echo(f"warning: {noise.warning()}")
        examples = data.examples(2)
        _check_augment(space, task, examples[0])
        resolve.check_model(task, space, examples)
        _check_fuse(settings, fixed, data.mode)
        if "auto" in (settings.jobs, settings.fuse):
            choice = capacity.choose(
                task, space, data, device, settings.trials, step=settings.step, fuse=settings.fuse
            )
            flags = [
                f"--{flag} auto" for flag in ("jobs", "fuse") if getattr(settings, flag) == "auto"
            ]
            echo(f"{', '.join(flags)}: {choice.reason}")
            if settings.fuse == "auto":
                fuse = choice.fuse
            if settings.jobs == "auto":
                worker_devices = workers.devices(
                    settings.device, list(settings.gpus), choice.jobs * max(1, len(settings.gpus))
                )
                threads = settings.threads or choice.threads
    elif settings.jobs == "auto" or settings.fuse != 1:
        flag = "--jobs auto" if settings.jobs == "auto" else f"--fuse {settings.fuse}"
        raise SettingsError(
            f"{flag}: works on the harness's own training loop, not a training function of "
            "the user's; give --jobs N" + (" and leave --fuse out" if settings.fuse != 1 else "")
        )

    sources = []
    if settings.warm_start and existing is None:
        sources = warm_start.load_sources(settings.warm_start, settings.warm_start_storage)
        mismatch = warm_start.metric_mismatch(
            sources, studies.Metric(task.scoring.metric_name, task.scoring.direction)
        )
        if mismatch:
            raise SettingsError(mismatch)
    uid = uuid.uuid4().hex  # a new study's; made here so that its MLflow run can carry it
    to_store = targets.stored()
    if targets.mlflow:
        # The tracking server answers (the study's run is found or made): the last check.
        targets = trackers.prepare(
            targets,
            name,
            {
                "settings": {
                    **fixed,
                    "kind": space.scoring.kind,
                    "metric": space.scoring.metric_name,
                    "direction": space.scoring.direction,
                },
                "space": space.data.get("params", {}),
                "environment": studies.environment(device),
                "storage": url,
                "uid": existing.user_attrs.get(studies.UID_ATTR) if existing else uid,
                "target": settings.trials,
            },
            given=settings.mlflow is not None,
        )
    # Everything is checked: only now is a study created or changed.
    if existing is None:
        try:
            study = _create(
                storage, url, name, space, task, fixed, device, settings.heartbeat, stale, uid
            )
        except optuna.exceptions.DuplicatedStudyError:
            # Another command created it since we looked: join it as a resume, checked as one.
            return _prepare(settings, echo, may_create=may_create)
        echo(
            f"created study {name} (space {space.source}, {fixed['sampler']} sampler, "
            f"{fixed['pruner']} pruner) in {studies.describe(url)}"
        )
        if sources:
            carried = warm_start.carry(sources, space, warm_start.how_many(settings.trials))
            echo(warm_start.enqueue(study, carried))
    else:
        study = existing
        if settings.warm_start:
            echo(f"--warm-start: study {name} exists already; a warm start only begins a study")
    if to_store != (stored_trackers or {}):
        study.set_user_attr(trackers.TRACKERS_ATTR, to_store)  # a resume writes there too
    plan = workers.Plan(
        study=name,
        url=url,
        space=space,
        task=task,
        fixed=fixed,
        target=settings.trials,
        devices=tuple(worker_devices),
        data_mode=data.mode if data else "yours",  # decided once: every worker takes one path
        data_dir=settings.data_dir,
        heartbeat=settings.heartbeat,
        timeout=settings.timeout,
        threads=threads,
        step=settings.step,
        fuse=fuse,
        show_trials=not settings.quiet,
        checkpoint_dir=settings.checkpoint_dir,
        # `search run` keeps its samplers' seeds reproducible; a worker may share its study
        # with workers of the same numbers on other machines.
        salt=0 if may_create else int.from_bytes(os.urandom(4), "little") or 1,
        trackers=targets,
    )
    return _Prepared(plan, study, data, device)


def _create(
    storage: optuna.storages.BaseStorage | None,
    url: str,
    name: str,
    space: Space,
    task: Task,
    fixed: dict[str, Any],
    device: Any,
    heartbeat: int,
    stale: bool,
    uid: str,
) -> optuna.Study:
    """A new study that records its space, search settings, fingerprints and environment."""
    storage = storage or studies.open_storage(url, create=True, heartbeat=heartbeat)
    if stale:
        # Created, then killed before its settings were stored: empty, so nothing is lost.
        optuna.delete_study(study_name=name, storage=storage)
    # Each worker brings its own sampler and pruner (see search.workers).
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=[
            space.scoring.direction,
            *(studies.COSTS[o] for o in fixed["objectives"].split(",")[1:]),
        ],
    )
    study.set_user_attr(studies.SPACE_ATTR, space.data)
    study.set_user_attr(
        studies.SETTINGS_ATTR,
        {
            **fixed,
            "space_name": space.name,
            "space_source": space.source,
            "space_dir": str(space.base_dir),
            "task": space.task,
            "model": space.model,
            "kind": space.scoring.kind,
            "metric": space.scoring.metric_name,
            "direction": space.scoring.direction,
            **({"train": space.train} if space.train is not None else {}),
        },
    )
    study.set_user_attr(studies.UID_ATTR, uid)
    if task.fingerprint is not None:
        study.set_user_attr(studies.FINGERPRINTS_ATTR, task.fingerprint)
    study.set_user_attr(studies.ENVIRONMENT_ATTR, studies.environment(device))
    return study


def study_name(settings: RunSettings) -> str:
    """The study a run works on: ``--study``, or the space's name."""
    return settings.study or spaces.name_of(settings.space, settings.objects)


def _check_fuse(settings: RunSettings, fixed: dict[str, Any], data_mode: str) -> None:
    """Fused trials train on device-resident data, and stop between reports, never pause."""
    if settings.fuse == 1:
        return  # "auto" may pick 1, but is refused where it could not pick more
    if fixed["pruner"] in ("halving", "halving-hb"):  # the pruners that pause (search.rungs)
        raise SettingsError(
            f"--fuse {settings.fuse} and --pruner {fixed['pruner']}: fused trials cannot pause "
            "for a rung; use --pruner sha (or median, hyperband)"
        )
    if data_mode != "resident":
        raise SettingsError(
            f"--fuse {settings.fuse}: fused trials draw their batches from device-resident data, "
            f"and this study's data is streamed ({data_mode}); use --data-mode resident"
        )


def _check_ranges(settings: RunSettings) -> None:
    if settings.trials < 0:
        raise SettingsError(f"--trials must be 0 (create only) or more, got {settings.trials}")
    if settings.epochs is not None and settings.epochs < 1:
        raise SettingsError(f"--epochs must be at least 1, got {settings.epochs}")
    if settings.seed is not None and not 0 <= settings.seed < 2**32:
        raise SettingsError(f"--seed must be in 0..{2**32 - 1}, got {settings.seed}")
    if settings.jobs != "auto" and (not isinstance(settings.jobs, int) or settings.jobs < 1):
        raise SettingsError(f"--jobs must be at least 1 or auto, got {settings.jobs!r}")
    if settings.threads is not None and settings.threads < 1:
        raise SettingsError(f"--threads must be at least 1, got {settings.threads}")
    if settings.step not in STEP_MODES:
        raise SettingsError(f"--step {settings.step!r}: choose one of {', '.join(STEP_MODES)}")
    if settings.fuse != "auto" and (not isinstance(settings.fuse, int) or settings.fuse < 1):
        raise SettingsError(f"--fuse must be at least 1 or auto, got {settings.fuse!r}")
    if settings.reports_per_epoch is not None and not (
        1 <= settings.reports_per_epoch <= MAX_REPORTS_PER_EPOCH
    ):
        raise SettingsError(
            f"--reports-per-epoch must be 1 to {MAX_REPORTS_PER_EPOCH}, "
            f"got {settings.reports_per_epoch}"
        )
    if settings.heartbeat < 1:
        raise SettingsError(f"--heartbeat must be at least 1 second, got {settings.heartbeat}")
    if settings.timeout is not None and settings.timeout <= 0:
        raise SettingsError(f"--timeout must be positive seconds, got {settings.timeout}")
    if settings.data_mode not in placement.DATA_MODES:
        raise SettingsError(
            f"--data-mode {settings.data_mode!r}: choose one of {', '.join(placement.DATA_MODES)}"
        )
    if settings.sampler is not None and settings.sampler not in studies.SAMPLERS:
        raise SettingsError(
            f"--sampler {settings.sampler!r}: unknown; choose one of {', '.join(studies.SAMPLERS)}"
        )
    if settings.pruner is not None and settings.pruner not in studies.PRUNERS:
        raise SettingsError(
            f"--pruner {settings.pruner!r}: unknown; choose one of {', '.join(studies.PRUNERS)}"
        )
    if settings.objectives is not None:
        _check_objectives(settings)


def _check_objectives(settings: RunSettings) -> None:
    """What can be checked before the space is read: costs after the metric, each named once."""
    names = settings.objectives.split(",")
    if names[0] in studies.COSTS or len(set(names)) != len(names):
        raise SettingsError(
            f"--objectives {settings.objectives}: start with the task's metric and name each "
            "once, e.g. accuracy,train-seconds"
        )
    for name in names[1:]:
        if name not in studies.COSTS:
            raise SettingsError(
                f"--objectives {settings.objectives}: unknown objective {name!r}; after the "
                f"task's metric choose from {', '.join(studies.COSTS)}"
            )
    if len(names) > 1 and settings.pruner not in (None, "none"):
        raise SettingsError(
            f"--pruner {settings.pruner}: Optuna's pruners need one objective, and "
            f"--objectives {settings.objectives} has {len(names)}; leave --pruner out"
        )
    if len(names) > 1 and settings.sampler == "cmaes":
        raise SettingsError(
            f"--sampler cmaes: CMA-ES optimizes one objective; with --objectives "
            f"{settings.objectives} use tpe, nsga2, gp, random or qmc"
        )


def _start_new(settings: RunSettings) -> str:
    """How a refused resume is told to start a new study instead: by flag, or by keyword."""
    if settings.objects.items() or isinstance(settings.space, dict):
        return 'start a new study with study="NEW_NAME"'
    return "start a new study with --study NEW_NAME"


def _check_own_training(settings: RunSettings, space: Space) -> None:
    """What a study of the user's training function cannot take: the loop's own settings."""
    if settings.reports_per_epoch not in (None, 1):
        raise SettingsError(
            f"--reports-per-epoch {settings.reports_per_epoch}: a training function of your own "
            f"({space.train}) reports when it likes; leave it out"
        )
    if "," in (settings.objectives or ""):
        raise SettingsError(
            f"--objectives {settings.objectives}: a training function of your own has one "
            "objective, the value it returns"
        )


def _objectives(settings: RunSettings, space: Space) -> str:
    """A new study's objectives: its task's metric, then any costs ``--objectives`` adds."""
    metric = space.scoring.metric_name
    if settings.objectives is None:
        return metric
    first = settings.objectives.split(",")[0]
    if first != metric:
        raise SettingsError(
            f"--objectives {settings.objectives}: the space's metric is {metric}; start with it, "
            f"e.g. {metric},train-seconds"
        )
    return settings.objectives


def _no_such_study(
    name: str, url: str, given: str | None, storage: optuna.storages.BaseStorage | None
) -> str:
    """A ``--study`` that names no study, with no ``--space`` to create it from: what is there."""
    found = studies.no_such_study(name, url, storage if given is not None else None)
    return f"--study {name}: {found}; pass --space SPACE to create it"


def _load_existing(
    url: str, name: str, heartbeat: int
) -> tuple[optuna.storages.BaseStorage | None, optuna.Study | None, bool]:
    """The storage if it exists, the study if it exists in it, and whether an empty study of that
    name was left by a command killed while creating it; never creates a SQLite file."""
    path = studies.sqlite_path(url)
    if path is not None and not path.exists():
        return None, None, False
    storage = studies.open_storage(url, create=path is None, heartbeat=heartbeat)
    if name not in studies.study_names(storage):
        return storage, None, False
    study = optuna.load_study(storage=storage, study_name=name)
    # Another command may have created it an instant ago and be storing its settings now.
    deadline = time.monotonic() + SETTLE_SECONDS
    while not study.user_attrs and not study.trials and time.monotonic() < deadline:
        time.sleep(0.2)
    if not study.user_attrs and not study.trials:
        return storage, None, True  # created, then killed before its settings were stored
    return storage, study, False


def resume_settings(
    study: optuna.Study,
    settings: RunSettings,
    url: str,
    new: str = "start a new study with --study NEW_NAME",
) -> tuple[Space, dict[str, Any]]:
    """The stored space and search settings of ``study``; an error, ending in ``new``, if
    ``settings`` differ."""
    attrs = study.user_attrs
    if studies.SETTINGS_ATTR not in attrs or studies.SPACE_ATTR not in attrs:
        raise StorageError(
            f"study {study.study_name} in {studies.describe(url)} was not created by search run"
        )
    stored = attrs[studies.SETTINGS_ATTR]
    space = stored_space(study)
    if settings.space is not None:
        given = spaces.load(settings.space, settings.objects)
        changed = spaces.diff(space.data, given.data)
        if changed:
            raise SpaceError(
                f"{given.source}: {changed}: differs from the space study {study.study_name} was created "
                f"with ({stored['space_source']}); {new}"
            )
    fixed = {key: stored.get(key, DEFAULTS.get(key)) for key in FIXED_SETTINGS}
    for key in FIXED_SETTINGS:
        value = getattr(settings, key)
        if value is not None and value != fixed[key]:
            flag = "--" + key.replace("_", "-")
            raise SettingsError(
                f"{flag} {value}: study {study.study_name} was created with {flag} {fixed[key]}; "
                f"a study's search settings are fixed, {new}"
            )
    return space, fixed


def check_objects(study: optuna.Study, space: Space, objects: Given, trials: int | None) -> None:
    """A study whose model, data or training function were given from Python needs them given
    again to go on: say so in one line, and how (``trials`` None: it is being exported).

    Raises:
        SettingsError: the command line (or a call that lacks them) on such a study, or objects
            given to a study whose space names files.
    """
    table = space.data["task"]
    lacking = given.missing(table, objects)
    name = study.study_name
    if lacking:
        which = " and ".join(f"its {'training function' if k == 'train' else k}" for k in lacking)
        args = given.call_arguments(table)
        call = (
            f'search.run(study="{name}", {args}, trials={trials or "N"})'
            if trials is not None
            else f'search.export(study="{name}", {args}, out="models/{name}")'
        )
        given_as = (
            "were given as Python objects" if len(lacking) > 1 else "was given as a Python object"
        )
        raise SettingsError(
            f"study {name}: {which} {given_as}, which only Python can give again: {call}"
        )
    for keyword, value in objects.items():
        stored = table.get(keyword)
        if not given.is_marker(stored) and not (keyword == "data" and stored == str(value)):
            raise SettingsError(
                f"{keyword}= given, and study {name} was created with task.{keyword} = "
                f"{stored!r}, not an object from Python; leave {keyword}= out"
            )


def stored_space(study: optuna.Study) -> Space:
    """The space a study was created with, its paths relative to the space file's folder."""
    stored = study.user_attrs[studies.SETTINGS_ATTR]
    return spaces.from_data(
        study.user_attrs[studies.SPACE_ATTR],
        name=stored["space_name"],
        source=f"study {study.study_name}",
        base_dir=Path(stored.get("space_dir", ".")),
    )


def check_unchanged(
    study: optuna.Study, task: Task, new: str = "start a new study with --study NEW_NAME"
) -> None:
    """Refuse a study whose data or model code changed since it was created (as its recorded
    fingerprints tell; studies of registered tasks record none)."""
    stored = study.user_attrs.get(studies.FINGERPRINTS_ATTR)
    if stored is None or task.fingerprint is None:
        return
    change = resolve.changed(stored, task.fingerprint)
    if change:
        raise SettingsError(f"study {study.study_name}: {change}; {new}")


def _check_augment(space: Space, task: Task, examples: Any) -> None:
    """Crop and flip need images: refuse a space that would augment other inputs."""
    if can_augment(examples):
        return
    sampled = next((p for p in space.params if p.name == "augment"), None)
    if sampled is not None and True in spaces.extremes(sampled.distribution):
        key = "params.augment"
    elif space.recipe.get("augment") or (task.augment and "augment" not in space.recipe):
        key = "task.recipe.augment"
    else:
        return
    inputs = examples if isinstance(examples, tuple) else (examples,)
    shown = ", ".join(
        f"{shape_text(tuple(x.shape[1:]))} {str(x.dtype).removeprefix('torch.')}" for x in inputs
    )
    raise SpaceError(
        f"{space.source}: {key}: augmentation crops and flips images (one input N×C×H×W of "
        f"floats), and the data's inputs are {shown}"
    )


def _check_batch_sizes(space: Space, n_train: int) -> None:
    for param in space.params:
        if param.name == "batch_size":
            largest = max(spaces.extremes(param.distribution))
            if largest > n_train:
                raise SpaceError(
                    f"{space.source}: params.batch_size: {largest} exceeds the {n_train} training "
                    f"examples of task {space.task}"
                )
            return
    default = space.hyperparameters({}).batch_size
    if default > n_train:
        raise SpaceError(
            f"{space.source}: the default batch size {default} exceeds the {n_train} training examples"
        )
