"""Storages, samplers and pruners by name, and what a study records about itself.

This is the only module that parses storage URLs. The default storage of study ``NAME`` is
``sqlite:///studies/NAME.db`` relative to the working directory.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import fcntl
import math
import os
import platform
import re
import subprocess
import warnings
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import sqlalchemy
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from search.core_storage import CoreStorage
from search.errors import SettingsError, StorageError
from search.rungs import CONTINUES, Halving

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    import torch

STUDIES_DIR = Path("studies")
SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc", "nsga2")
# What a study can optimize beside its task's metric (which comes first): what a trial costs.
COSTS = {"train-seconds": "minimize", "params": "minimize"}
PRUNERS = ("halving", "halving-hb", "median", "hyperband", "sha", "patient", "none")
# A FAIL with one of these reasons says something about its configuration, so it counts as a
# finished trial; any other FAIL (a crash, an interrupt) is work still to do.
COUNTED_FAIL_REASONS = ("diverged", "oom")
MAX_RETRIES = 3  # times a trial whose worker died (or was interrupted) is run again
SETTINGS_ATTR = "search.settings"
SPACE_ATTR = "search.space"
ENVIRONMENT_ATTR = "search.environment"
FINGERPRINTS_ATTR = "search.fingerprints"  # the user's data and model code, to detect a change
UID_ATTR = "search.uid"  # a new study's own random id: a tracker tells it from one of its name
TRIAL_ATTR = "search.trial"  # a trial's costs, one user attr (see `trial_attrs`)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    _RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(name: str) -> str:
    """A study name, which also names its default database file."""
    if not _NAME.fullmatch(name):
        raise SettingsError(
            f"study name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit)"
        )
    return name


def default_url(name: str) -> str:
    return f"sqlite:///{STUDIES_DIR / check_name(name)}.db"


# The drivers the `postgres` and `mysql` extras install; SQLAlchemy's defaults for a bare
# postgresql:// or mysql:// URL (psycopg2, mysqlclient) need a compiler and client headers.
_DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
_EXTRAS = {"postgresql": "postgres", "mysql": "mysql"}
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def describe(url: str) -> str:
    """A URL fit to print: the password hidden, even in a URL that does not parse."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return _PASSWORD.sub(r"\1***@", url)


def _engine_url(parsed: sqlalchemy.engine.URL) -> str:
    if parsed.drivername in _DRIVERS:
        parsed = parsed.set(drivername=_DRIVERS[parsed.drivername])
    return parsed.render_as_string(hide_password=False)


def backend_name(url: str) -> str:
    """``sqlite``, ``postgresql``, ``mysql`` ..."""
    return _parse(url).get_backend_name()


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other (or in-memory) storages."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def open_storage(
    url: str, *, create: bool, heartbeat: int | None = None
) -> optuna.storages.RDBStorage:
    """Open an RDB storage. With ``create=False`` a missing SQLite file is an error, not a new file.

    With ``heartbeat`` (seconds), running trials record a heartbeat that often; one silent for
    three intervals is failed, and a copy of it (same params, same checkpoint) is queued.

    Raises:
        StorageError: the URL is malformed, its driver is missing, or the database is unreachable.
    """
    parsed = _parse(url)
    path = sqlite_path(url)
    engine_kwargs: dict[str, Any] = {}
    if path is not None:
        if not path.exists():
            if not create:
                raise StorageError(f"no study database at {path} (search list shows the studies)")
            if path.parent == STUDIES_DIR:
                path.parent.mkdir(exist_ok=True)
            elif not path.parent.is_dir():
                raise StorageError(f"storage {url}: folder {path.parent} does not exist")
        # Wait for a busy database instead of failing at once (a dashboard may be reading it).
        engine_kwargs["connect_args"] = {"timeout": 30}
    elif parsed.get_backend_name() == "sqlite" and not create:
        raise StorageError(f"storage {url}: an in-memory database holds no studies")
    else:
        # A server restart drops pooled connections: test each before use, and replace it.
        engine_kwargs.update(pool_pre_ping=True, pool_recycle=300)
    heartbeat_kwargs: dict[str, Any] = {}
    if heartbeat is not None:
        heartbeat_kwargs = {
            "heartbeat_interval": heartbeat,
            "grace_period": 3 * heartbeat,
            "heartbeat_stale_trial_callback": _RETRY,
        }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
            with folder_lock(path):
                storage = CoreStorage(
                    _engine_url(parsed), engine_kwargs=engine_kwargs, **heartbeat_kwargs
                )
                if path is not None and create:
                    # Readers (a dashboard, `search list`) then never block the workers writing.
                    with storage.engine.connect() as connection:
                        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        if path is not None:
            sqlalchemy.event.listen(storage.engine, "connect", _sync_at_checkpoints)
            storage.engine.dispose()  # the connections opened so far predate the listener
        return storage
    except ImportError as e:
        extra = _EXTRAS.get(parsed.get_backend_name())
        hint = f"; pip install 'search[{extra}]'" if extra else ""
        raise StorageError(f"storage {describe(url)}: driver not installed ({e}){hint}") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError) as e:
        if path is not None and not os.access(path.parent, os.W_OK):
            raise StorageError(
                f"storage {url}: folder {path.parent} is read-only, and SQLite writes its journal "
                "beside the database; make it writable or copy the file elsewhere"
            ) from None
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"storage {describe(url)}: {first_line}") from None


@contextlib.contextmanager
def folder_lock(path: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on the database's folder while Optuna creates or checks the schema
    (and while a rung of `search.promotion` is decided).

    Optuna's RDBStorage creates its tables and stamps their version on first open; two commands
    opening one new SQLite file in the same instant both try, and one fails ("table already
    exists", or a UNIQUE constraint on ``alembic_version``). The lock is on the folder, not the
    file, so that it leaves nothing behind and never meets SQLite's own locks on the database.
    """
    if path is None:
        yield
        return
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


def _sync_at_checkpoints(dbapi_connection: Any, _record: Any) -> None:
    """In WAL mode, sync the disk at checkpoints rather than at every commit: a crash or kill -9
    still loses nothing committed (only a power cut can lose the last commits, never the
    database), and each of a trial's writes costs a fraction of a synchronous one."""
    cursor = dbapi_connection.cursor()
    try:
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _parse(url: str) -> sqlalchemy.engine.URL:
    try:
        return sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"--storage {describe(url)!r}: not a storage URL (e.g. sqlite:///studies/NAME.db, "
            "postgresql://user@host/db)"
        ) from None


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def make_sampler(
    name: str, seed: int, *, conditional: bool = False, trials: int | None = None
) -> optuna.samplers.BaseSampler:
    """A sampler by name. ``conditional``: the space has params sampled only under a condition;
    ``trials``: the study's target, which sets how many random trials TPE starts with."""
    if name == "tpe":
        with warnings.catch_warnings():
            # `group` is marked experimental; it is what lets TPE model conditional params jointly.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return LiarWhenShared(
                seed=seed,
                multivariate=True,
                group=conditional,
                n_startup_trials=tpe_startup_trials(trials),
            )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES handles the numeric params; categoricals fall back to its independent sampler.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(
                seed=seed, scramble=True, warn_independent_sampling=False
            )
    raise SettingsError(f"--sampler {name!r}: unknown; choose one of {', '.join(SAMPLERS)}")


class LiarWhenShared(optuna.samplers.TPESampler):
    """TPE with its constant liar on only while other trials of the study run beside this one.

    The liar makes parallel workers see each other's running trials as bad points rather than
    unexplored ones. Alone, it changes no sample (the only running trial is the one sampled, which
    the liar leaves out), but it costs two storage reads and a write per trial: TPE then reads
    the trials afresh instead of from the read Optuna makes once per trial, and shares each
    trial's relative params for other workers. So it is switched per trial, by the running
    trials in that once-per-trial read.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(constant_liar=True, **kwargs)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # `_get_trials(use_cache=True)` is the read Optuna's samplers share within one trial
        # (`infer_relative_search_space` makes it right after this); `_constant_liar` is read
        # by `sample_relative` and `_sample`.
        running = study._get_trials(deepcopy=False, states=(TrialState.RUNNING,), use_cache=True)
        self._constant_liar = any(t.number != trial.number for t in running)
        super().before_trial(study, trial)


def tpe_startup_trials(trials: int | None) -> int:
    """TPE's random trials before it models: a tenth of the target, 4 to Optuna's default 10
    (at 30 trials, Optuna's 10 would leave TPE a third of the budget in its random phase)."""
    return 10 if trials is None else min(10, max(4, trials // 10))


def brackets_short_of_tpe(settings: dict[str, Any], trials: int) -> str | None:
    """A warning when Hyperband's brackets leave TPE too few trials to model: TPE samples each
    bracket from that bracket's trials alone, and starts each with its random trials."""
    if (settings["sampler"], settings["pruner"]) != ("tpe", "hyperband"):
        return None
    steps = settings["epochs"] * settings.get("reports_per_epoch", 1)
    brackets = math.floor(math.log(steps, 3) + 1e-9) + 1  # reduction factor 3, first rung 1 step
    needed = 2 * brackets * tpe_startup_trials(trials)
    if trials >= needed:
        return None
    return (
        f"--pruner hyperband: its {brackets} brackets share the {trials} trials, and TPE starts "
        f"each with {tpe_startup_trials(trials)} random ones; it models few before {needed} "
        "trials (--pruner sha has one bracket)"
    )


def make_pruner(name: str, epochs: int, reports_per_epoch: int = 1) -> optuna.pruners.BasePruner:
    """A pruner by name, for trials that report ``reports_per_epoch`` times per epoch: steps
    1..epochs × reports_per_epoch, the first rung of the halving pruners at the first report."""
    steps = epochs * reports_per_epoch
    if name in ("halving", "halving-hb"):
        # Successive halving (Hyperband) that pauses trials at rungs and promotes the best.
        return Halving(steps, hyperband=name == "halving-hb")
    if name == "median":
        # From the first half epoch on (a report per epoch: from the first), once 3 trials done.
        return MedianOncePerTrial(
            n_startup_trials=3, n_warmup_steps=max(0, reports_per_epoch // 2 - 1)
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=steps, reduction_factor=3
        )
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "patient":
        # The median pruner, but a trial whose accuracy still rose within the last epoch goes on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.PatientPruner(
                make_pruner("median", epochs, reports_per_epoch), patience=reports_per_epoch
            )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SettingsError(f"--pruner {name!r}: unknown; choose one of {', '.join(PRUNERS)}")


def trial_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """What a trial recorded: its costs (one user attr, `TRIAL_ATTR`) and its other user attrs
    (``fail_reason``, and every key of a trial recorded before costs were written as one)."""
    packed = trial.user_attrs.get(TRIAL_ATTR)
    if not isinstance(packed, dict):
        return trial.user_attrs
    # A retry of a trial recorded key by key carries copies of those keys: its own costs win.
    return {**{k: v for k, v in trial.user_attrs.items() if k != TRIAL_ATTR}, **packed}


class MedianOncePerTrial(optuna.pruners.MedianPruner):
    """Optuna's median pruner, reading the study's trials once per trial instead of at every
    report: a read costs as much as the report itself, and the completed trials it compares with
    do not change while the trial runs in one process (with several workers, trials that complete
    meanwhile join the comparison from the worker's next trial on)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._read: tuple[int | None, list[FrozenTrial]] = (None, [])

    def remember(self, number: int, trials: list[FrozenTrial]) -> None:
        """Take ``trials``, read as trial ``number`` started, as that trial's read."""
        self._read = (number, trials)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self._read[0] != trial.number:
            self._read = (trial.number, study.get_trials(deepcopy=False))
        return super().prune(StudyView(study, self._read[1]), trial)


class StudyView:
    """A study whose trials are ``trials`` (read before, or rewritten for a sampler); all else is
    the study's."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        self._study = study
        self._trials = trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def _get_trials(
        self, deepcopy: bool = True, states: Any = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        return self.get_trials(deepcopy, states)  # as Optuna's samplers read a study


def is_finished(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards the study's ``--trials`` target."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return (
        trial.state == TrialState.FAIL
        and trial.user_attrs.get("fail_reason") in COUNTED_FAIL_REASONS
    )


@dataclass(frozen=True)
class Metric:
    """The validation metric a study is scored by, and which way is better."""

    name: str = "accuracy"
    direction: str = "maximize"

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def label(self) -> str:
        """As a trial's line shows it: ``val_acc``, ``val_rmse`` ..."""
        return "val_acc" if self.name == "accuracy" else f"val_{self.name}"

    @property
    def title(self) -> str:
        """As a chart's axis names it: ``validation accuracy``, ``validation rmse (lower is
        better)``."""
        return f"validation {self.name}" + ("" if self.maximize else " (lower is better)")

    def best(self, values: Iterable[float]) -> float | None:
        chosen = max if self.maximize else min
        return chosen(values, default=None)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def key(self, value: float) -> float:
        """A sort key under which larger is better, whichever way the metric goes."""
        return value if self.maximize else -value


def metric_of(study: optuna.Study) -> Metric:
    """The metric ``study`` is scored by (studies made before metrics were named: accuracy,
    maximized)."""
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    return Metric(settings.get("metric", "accuracy"), study.directions[0].name.lower())


def epoch_values(trial: FrozenTrial) -> dict[float, float]:
    """The validation metric at each report, keyed by epochs trained (1, 2 ... or, with k
    reports per epoch, 1/k, 2/k ...): the values the trial reported, or (in multi-objective
    studies, where Optuna takes no reports) the same values from its user attrs."""
    per_epoch = reports_per_epoch(trial)
    if trial.intermediate_values:
        steps = trial.intermediate_values
    else:
        attrs = trial_attrs(trial)
        recorded = attrs.get("val_values", attrs.get("val_accuracy"))
        steps = dict(enumerate(recorded or [], 1))
    return {step_in_epochs(step, per_epoch): value for step, value in steps.items()}


def reports_per_epoch(trial: FrozenTrial) -> int:
    """How often ``trial`` reported per epoch (trials recorded before this could vary: once)."""
    return int(trial_attrs(trial).get("reports_per_epoch", 1))


def epochs_text(epochs: float | None) -> str:
    """Epochs as shown: ``3``, or ``2.25`` for a trial stopped at a report inside an epoch."""
    return "?" if epochs is None else f"{epochs:g}"


def step_in_epochs(step: int, reports_per_epoch: int) -> float:
    """A pruner's step (a report count) in epochs: whole numbers for one report per epoch."""
    value = round(step / reports_per_epoch, 6)
    return int(value) if value.is_integer() else value


def trial_result(trial: FrozenTrial, metric: Metric) -> float | None:
    """A trial's best validation metric, pruned trials included (None if it reported none)."""
    return metric.best(epoch_values(trial).values())


def value(trial: FrozenTrial) -> float:
    """A complete trial's validation metric, its first (or only) objective."""
    return trial.values[0]


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best trial; for several objectives, the one with the best metric on the Pareto front
    (the earliest among equals). None before any trial completes."""
    front = study.best_trials
    metric = metric_of(study)
    return max(front, key=lambda t: (metric.key(t.values[0]), -t.number)) if front else None


def count_finished(study: optuna.Study) -> int:
    """Finished trials, continuations of paused trials not among them (a configuration counts
    once, from the moment its first trial pauses or ends), as `search.claims.counts`."""
    trials = study.get_trials(deepcopy=False)
    return sum(is_finished(t) for t in trials if CONTINUES not in t.system_attrs)


def requeue_unfinished(study: optuna.Study) -> None:
    """Queue a retry of every trial whose worker died or was interrupted and is not retried yet.

    Stale trials (no heartbeat for three intervals) go through Optuna's heartbeat machinery;
    interrupted ones (Ctrl-C, SIGTERM) are handed to the same retry callback.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        _fail_silent_trials(study)
        trials = study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in _RETRY.retry_history(t)}
        for trial in trials:
            interrupted = trial.user_attrs.get("fail_reason") == "interrupted"
            if trial.state == TrialState.FAIL and interrupted and trial.number not in retried:
                _RETRY(study, trial)


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The study's RDB storage, from under Optuna's cache layer; None for other storages."""
    storage = getattr(study._storage, "_backend", study._storage)
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None


def _fail_silent_trials(study: optuna.Study) -> None:
    """Fail (and queue a retry of) RUNNING trials that never recorded a heartbeat.

    Optuna's stale-trial check skips a trial with no heartbeat at all, which is what a worker
    killed between creating a trial and starting its heartbeat leaves behind: RUNNING forever.
    Older than the grace period, such a trial has no live worker.
    """
    storage = rdb_storage(study)
    interval = None if storage is None else storage.heartbeat_interval
    if interval is None:
        return
    grace = storage.grace_period or 2 * interval
    with storage.engine.connect() as connection:
        silent = connection.execute(
            sqlalchemy.text(
                "SELECT t.trial_id, t.number FROM trials t JOIN studies s ON s.study_id = t.study_id"
                " WHERE s.study_name = :name AND t.state = 'RUNNING' AND NOT EXISTS"
                " (SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id)"
            ),
            {"name": study.study_name},
        ).all()
    if not silent:
        return
    trials = study.get_trials(deepcopy=False)
    for trial_id, number in silent:
        started = trials[number].datetime_start
        now = datetime.now(started.tzinfo) if started else None
        if started is None or (now - started).total_seconds() < grace:
            continue
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                _RETRY(study, copy.deepcopy(storage.get_trial(trial_id)))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first


def original_number(trial: FrozenTrial) -> int:
    """The number of the trial this one retries (through any chain of retries), or its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        origin = _RETRY.retried_trial_number(trial)
    return trial.number if origin is None else origin


def retried_from(trial: FrozenTrial) -> int | None:
    """The trial this one takes over from: the one it retries directly (the last of its chain of
    retries), or the paused trial it continues, whichever came later; None for a new trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = _RETRY.retry_history(trial)
    previous = (history[-1] if history else None, trial.system_attrs.get(CONTINUES))
    return max((n for n in previous if n is not None), default=None)


def continues(trial: FrozenTrial) -> int | None:
    """The paused trial this one continues (directly, or as a retry of a continuation), or
    None."""
    return trial.system_attrs.get(CONTINUES)


def superseded(trials: Iterable[FrozenTrial]) -> set[int]:
    """The trials views leave out, so that they show each configuration once: a paused trial
    whose continuation has started (the continuation reports the whole curve again), or else
    the continuation, while it waits."""
    hidden = set()
    for trial in trials:
        paused = trial.system_attrs.get(CONTINUES)
        if paused is not None:
            hidden.add(trial.number if trial.state == TrialState.WAITING else paused)
    return hidden


def shown(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` less those superseded by a continuation."""
    trials = list(trials)
    hidden = superseded(trials)
    return [t for t in trials if t.number not in hidden]


def trial_seed(study_seed: int, number: int) -> int:
    """A trial's own seed, derived from the study's seed and the trial number."""
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0] >> 1)


def sampler_seed(study_seed: int, worker: int, trials_so_far: int, salt: int = 0) -> int:
    """A sampler's seed: distinct per worker and per resume, or a resumed run (or a second
    worker) would draw the same start-up configurations again. ``salt`` tells apart workers of
    the same number on different machines."""
    entropy = [study_seed, worker, trials_so_far, 1] + ([salt] if salt else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


def environment(device: torch.device) -> dict[str, Any]:
    """Package versions, device and git revision, recorded on the study when it is created."""
    import torch  # here, not at the top: reading studies must not need torch

    packages = ("search", "torch", "torchvision", "optuna", "sqlalchemy", "numpy", "scikit-learn")
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    return {
        "versions": versions,
        "device": str(device),
        "device_name": device_name,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "platform": platform.platform(),
        "git_sha": _git_sha(),
    }


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def local_urls() -> list[str]:
    """The storage URLs of the SQLite files in studies/."""
    return [f"sqlite:///{path}" for path in sorted(STUDIES_DIR.glob("*.db"))]


def load_existing(name: str, url: str) -> optuna.Study:
    """A study that must already exist; `StorageError` naming the studies there otherwise."""
    path = sqlite_path(url)
    if path is not None and not path.exists() and url == default_url(name):
        raise StorageError(no_such_study(name, url))
    storage = open_storage(url, create=False)
    if name not in study_names(storage):
        raise StorageError(no_such_study(name, url, storage))
    return optuna.load_study(storage=storage, study_name=name)


def no_such_study(name: str, url: str, storage: optuna.storages.BaseStorage | None = None) -> str:
    """That no study ``name`` is at ``url``: the studies that are (in ``storage``, or, for a
    name's own default file that does not exist, the files beside it), and the closest."""
    if storage is not None:
        found, where = study_names(storage), describe(url)
    else:
        found = [Path(u.removeprefix("sqlite:///")).stem for u in local_urls()]
        where = f"{STUDIES_DIR}/"
    close = difflib.get_close_matches(name, found, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"no study {name!r} in {where} (it has: {', '.join(found) or 'none'}{hint})"
