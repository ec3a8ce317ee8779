"""`search bench hpo`: every strategy × seed as its own study, then a comparison.

A strategy is a sampler and a pruner (every pair of ``--samplers`` × ``--pruners``), or one
named by ``--strategies`` as ``SAMPLER+PRUNER[:Kx][@N]``: K reports per epoch, N trials. Each
combination is an ordinary study in one storage, named ``bench-SPACE/STRATEGY/seedN`` and run by
`search.runner.run`, so it trains through the same `Objective` and `train.fit` as
`search run`, and a rerun of the same command runs only what is missing. ``--jobs N`` runs N
studies at a time, one process each; a study's own trials stay sequential, so each sampler sees
exactly the history it would see alone and a seed's result does not depend on ``--jobs``.

Seed N of every combination uses the same study seed, so the same validation split and the same
per-trial seeds: strategies are compared on common random numbers, and paired across seeds.

A trial costs its training seconds (evaluations included) plus the wall time its sampler and
pruner took; training seconds alone are shown beside. The task's metric may be better higher
(accuracy) or lower (RMSE): curves, targets and times to target are computed on a score that is
better higher (the metric, or its negative) and shown in the metric's own units. The evidence for
pruning comes from the trials of random search without pruning that report most often: how well
their metric after ¼, ½, 1 and 3 epochs ranks them as their final result does
(`curves.rank_agreement`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from search import spaces
from search import study as studies
from search.bench import curves
from search.errors import SearchError, SettingsError
from search.tasks import resolve

TEST_ATTR = "search.test_accuracy"  # the best trial retrained and scored on the test set
REFERENCE = ("random", "none")
EVIDENCE_EPOCHS = (0.25, 0.5, 1.0, 3.0)  # where early accuracies are ranked against final ones
ENOUGH_SEEDS = 0.8  # a headline strategy reaches the target on at least this share of seeds
_SPEC = re.compile(
    r"(?P<sampler>[a-z0-9]+)\+(?P<pruner>[a-z0-9-]+)(?::(?P<k>\d+)x)?(?:@(?P<n>\d+))?"
    r"(?P<warm>~warm)?"
)


@dataclass(frozen=True)
class HpoSettings:
    space: str
    samplers: tuple[str, ...] = ("random", "tpe")
    pruners: tuple[str, ...] = ("none", "median")
    strategies: tuple[str, ...] = ()  # SAMPLER+PRUNER[:Kx][@N]; replaces samplers × pruners
    seeds: int = 3
    trials: int = 30
    epochs: int | None = None
    jobs: int = 1
    storage: str | None = None
    device: str | None = None
    data_dir: Path = Path("data")
    heartbeat: int = 10

    @property
    def prefix(self) -> str:
        return f"bench-{spaces.resolve(self.space).stem}"


@dataclass(frozen=True)
class StrategySpec:
    """A sampler and pruner, how often trials report per epoch, and how many trials a study runs."""

    sampler: str
    pruner: str
    reports_per_epoch: int
    trials: int
    default_trials: int  # --trials: a strategy of that many trials is named without them
    warm: bool = False  # warm-started from the reference strategy's studies of the other seeds

    @property
    def name(self) -> str:
        reports = f":{self.reports_per_epoch}x" if self.reports_per_epoch > 1 else ""
        trials = f"@{self.trials}" if self.trials != self.default_trials else ""
        return f"{self.sampler}+{self.pruner}{reports}{trials}" + ("~warm" if self.warm else "")

    @classmethod
    def parse(cls, text: str, trials: int) -> StrategySpec:
        match = _SPEC.fullmatch(text.strip())
        if match is None:
            raise SettingsError(
                f"--strategies {text!r}: not SAMPLER+PRUNER[:Kx][@N][~warm], e.g. tpe+halving:4x@60"
            )
        return cls(
            match["sampler"],
            match["pruner"],
            int(match["k"] or 1),
            int(match["n"] or trials),
            trials,
            bool(match["warm"]),
        )


@dataclass(frozen=True)
class Combination:
    spec: StrategySpec
    seed: int

    @property
    def strategy(self) -> str:
        return self.spec.name

    def study_name(self, prefix: str) -> str:
        return f"{prefix}/{self.strategy}/seed{self.seed}"


@dataclass(frozen=True)
class Strategy:
    """One strategy over all seeds: its curves and what they say."""

    name: str
    spec: StrategySpec
    by_seconds: list[curves.StepCurve]  # by cost: training, sampling and pruning seconds
    by_trials: list[curves.StepCurve]
    final: curves.Interval
    to_target: curves.TargetTimes  # by cost
    to_target_training: curves.TargetTimes  # by training seconds alone
    training_seconds: float  # mean over seeds
    search_seconds: float  # mean over seeds: the sampler's and pruner's own wall time
    epochs_saved: float  # share of the epochs a study without pruning would have run
    test_values: list[float] = field(default_factory=list)  # each seed's best trial's test metric


@dataclass(frozen=True)
class Evidence:
    """How well early accuracies rank configurations as their final results do."""

    strategy: str  # whose trials: random search without pruning, reporting most often
    trials: int
    at: dict[float, curves.Interval]  # epochs -> Spearman's rho [95 % CI]


@dataclass(frozen=True)
class Comparison:
    settings: HpoSettings
    url: str
    reference: str
    strategies: list[Strategy]
    epochs: int
    task: str
    model: str
    evidence: Evidence | None = None
    metric: studies.Metric = field(default_factory=studies.Metric)

    def shown(self, score: float) -> float:
        """A score (better higher) in the metric's own units."""
        return self.metric.key(score)

    def shown_interval(self, interval: curves.Interval) -> curves.Interval:
        """An interval of scores in the metric's own units (its ends swap for a metric that is
        better lower)."""
        if self.metric.maximize:
            return interval
        return curves.Interval(-interval.value, -interval.high, -interval.low)

    def headline(self) -> str:
        """The cheapest strategy to the reference's final metric, in one line."""
        reference = next(s for s in self.strategies if s.name == self.reference)
        target = self.shown(reference.to_target.target)
        metric = self.metric.name
        others = [
            s
            for s in self.strategies
            if s.name != self.reference and s.to_target.reached >= ENOUGH_SEEDS
        ]
        seeds = f"{self.settings.seeds} seed{'s' if self.settings.seeds > 1 else ''}"
        if not others:
            return (
                f"no strategy reached {self.reference}'s final {metric} ({target:.4f}) on "
                f"{ENOUGH_SEEDS:.0%} of the seeds, {seeds}"
            )
        best = min(others, key=lambda s: s.to_target.ratio.value)
        ratio = best.to_target.ratio
        return (
            f"{best.name} reached {self.reference}'s final {metric} ({target:.4f}) in "
            f"{ratio.value:.2f}× its cost (95 % CI {_fmt_ratio(ratio.low)}–"
            f"{_fmt_ratio(ratio.high)}) on {best.to_target.reached:.0%} of {seeds}"
        )


def specs(settings: HpoSettings) -> list[StrategySpec]:
    """``--strategies``, or every ``--samplers`` × ``--pruners`` pair."""
    if settings.strategies:
        return [StrategySpec.parse(text, settings.trials) for text in settings.strategies]
    return [
        StrategySpec(sampler, pruner, 1, settings.trials, settings.trials)
        for sampler in settings.samplers
        for pruner in settings.pruners
    ]


def combinations(settings: HpoSettings) -> list[Combination]:
    return [Combination(spec, seed) for spec in specs(settings) for seed in range(settings.seeds)]


def reference_of(settings: HpoSettings) -> str:
    """random+none (at --trials, once per epoch) when it is among the strategies, else the first."""
    names = [spec.name for spec in specs(settings)]
    return "+".join(REFERENCE) if "+".join(REFERENCE) in names else names[0]


def check(settings: HpoSettings) -> None:
    """Every setting, before anything is created."""
    for flag, names, known in (
        ("--samplers", settings.samplers, studies.SAMPLERS),
        ("--pruners", settings.pruners, studies.PRUNERS),
    ):
        if not names:
            raise SettingsError(f"{flag}: name at least one")
        for name in names:
            if name not in known:
                raise SettingsError(f"{flag} {name!r}: unknown; choose from {', '.join(known)}")
        if len(set(names)) != len(names):
            raise SettingsError(f"{flag} {','.join(names)}: a name is repeated")
    for flag, value in (("--seeds", settings.seeds), ("--trials", settings.trials)):
        if value < 1:
            raise SettingsError(f"{flag} must be at least 1, got {value}")
    given = specs(settings)
    for spec in given:
        for name, known in ((spec.sampler, studies.SAMPLERS), (spec.pruner, studies.PRUNERS)):
            if name not in known:
                raise SettingsError(
                    f"--strategies: {name!r} is unknown; choose from {', '.join(known)}"
                )
        if spec.trials < 1 or spec.reports_per_epoch < 1:
            raise SettingsError(f"--strategies {spec.name}: trials and reports must be at least 1")
    names = [spec.name for spec in given]
    if len(set(names)) != len(names):
        raise SettingsError(f"--strategies {','.join(names)}: a strategy is repeated")
    warm = [spec.name for spec in given if spec.warm]
    if warm and (settings.seeds < 2 or reference_of(settings) in warm):
        raise SettingsError(
            f"--strategies {warm[0]}: a warm start takes the best configurations of the other "
            f"seeds' {'+'.join(REFERENCE)} studies: run that strategy too, on 2 seeds or more"
        )
    if settings.jobs < 1:
        raise SettingsError(f"--jobs must be at least 1, got {settings.jobs}")
    if settings.epochs is not None and settings.epochs < 1:
        raise SettingsError(f"--epochs must be at least 1, got {settings.epochs}")
    space = spaces.load(settings.space)
    task = resolve.resolve(space, data_dir=settings.data_dir)
    if task.train is None:  # a training function of the user's reads its own data
        task.load(settings.data_dir, False, True)  # TaskError naming missing files


def run(settings: HpoSettings, echo: Any = print) -> Comparison:
    """Run every missing combination (``--jobs`` at a time), then compare the strategies."""
    check(settings)
    url = settings.storage or studies.default_url(settings.prefix)
    # Created once here: workers racing to create the tables would fail.
    storage = studies.open_storage(url, create=True)
    todo = [c for c in combinations(settings) if not _complete(storage, url, settings, c)]
    echo(
        f"bench {settings.prefix}: {len(specs(settings))} strategies × {settings.seeds} seeds "
        f"in {studies.describe(url)}; "
        + (f"{len(todo)} studies to run, {settings.jobs} at a time" if todo else "all done")
    )
    # Warm starts read the other seeds' finished studies of the reference: those run first.
    for phase in ([c for c in todo if not c.spec.warm], [c for c in todo if c.spec.warm]):
        if phase:
            _run_all(settings, url, phase, echo)
    return compare(settings, url)


def _complete(storage: Any, url: str, settings: HpoSettings, combination: Combination) -> bool:
    """Whether a combination's study has its trials and its test accuracy already.

    Raises:
        SearchError: the study exists with another space or other search settings.
    """
    from search import runner

    name = combination.study_name(settings.prefix)
    if name not in studies.study_names(storage):
        return False
    study = optuna.load_study(study_name=name, storage=storage)
    runner.resume_settings(
        study,
        _run_settings(settings, url, combination),
        url,
        new="benchmark them in another --storage",
    )
    return (
        studies.count_finished(study) >= combination.spec.trials and TEST_ATTR in study.user_attrs
    )


def _run_all(settings: HpoSettings, url: str, todo: list[Combination], echo: Any) -> None:
    context = multiprocessing.get_context("spawn")  # CUDA cannot be shared with a forked child
    pending: Any = context.Queue()
    for combination in todo:
        pending.put(combination)
    done: Any = context.Queue()
    jobs = min(settings.jobs, len(todo))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    processes = [
        context.Process(target=_worker, args=(settings, url, pending, done, threads))
        for _ in range(jobs)
    ]
    for process in processes:
        process.start()
    failures: list[str] = []
    try:
        for finished in range(1, len(todo) + 1):
            while True:
                try:
                    ok, line = done.get(timeout=1)
                    break
                except queue.Empty:
                    if not any(p.is_alive() for p in processes):
                        raise SearchError("every bench worker exited; rerun to resume") from None
            echo(f"[{finished:>{len(str(len(todo)))}}/{len(todo)}] {line}")
            if not ok:
                failures.append(line)
    except BaseException:
        for process in processes:
            process.terminate()  # SIGTERM: the running trial is left retryable, as on Ctrl-C
        raise
    finally:
        for process in processes:
            process.join()
    if failures:
        raise SearchError(f"{len(failures)} combination(s) failed, first: {failures[0]}")


def _worker(settings: HpoSettings, url: str, pending: Any, done: Any, threads: int) -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import torch

    torch.set_num_threads(threads)
    try:
        _warm_up(settings)
        while True:
            try:
                combination = pending.get_nowait()
            except queue.Empty:
                return
            name = combination.study_name(settings.prefix)
            try:
                done.put((True, f"{name}: {_run_one(settings, url, combination)}"))
            except SearchError as e:
                done.put((False, f"{name}: {e}"))
    except KeyboardInterrupt:
        pass  # the parent reports the interruption


def _warm_up(settings: HpoSettings) -> None:
    """Train briefly before any timed trial: a process's first training step pays one-time costs
    (measured on the CPU: about 1.3 s more for its first trial), which would otherwise be charged
    to whichever strategy's study a process happens to run first."""
    from search.contract import LOOP_PARAMS
    from search.tasks import placement
    from search.train import fit, pick_device

    space = spaces.load(settings.space)
    task = resolve.resolve(space, data_dir=settings.data_dir)
    if task.train is not None:
        return  # what a training function of the user's pays once is its own affair
    data = placement.load_data(
        task, space, seed=0, device=pick_device(settings.device), data_dir=settings.data_dir
    )
    # The largest batch and model the space allows, with the loop's other settings at defaults.
    largest = space.extreme_configurations()[1]
    params = {k: v for k, v in largest.items() if k == "batch_size" or k not in LOOP_PARAMS}
    model = task.build_model(params)
    fit(model, data, space.hyperparameters(params), epochs=1, seed=0, scoring=task.scoring)


def _run_one(settings: HpoSettings, url: str, combination: Combination) -> str:
    """One study to its target, then its best trial's test accuracy, recorded on the study."""
    from search.runner import run

    study = run(_run_settings(settings, url, combination), echo=lambda line: None).study
    if TEST_ATTR not in study.user_attrs:
        _record_test_value(study, settings)
    every = study.get_trials(deepcopy=False)
    seconds = sum(
        studies.trial_attrs(t).get("seconds", 0.0) for t in every if studies.is_finished(t)
    )
    trials = [t for t in studies.shown(every) if studies.is_finished(t)]  # configurations
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    test = test_record(study)
    metric = studies.metric_of(study).name
    return (
        f"{len(trials)} trials ({pruned} pruned), best val {metric} {test['val_value']:.4f}, "
        f"test {test['value']:.4f}, {seconds:.1f} s training"
    )


def test_record(study: optuna.Study) -> dict[str, Any]:
    """The best trial's test result (recorded before metrics were named: under accuracy keys)."""
    record = dict(study.user_attrs[TEST_ATTR])
    for key in ("value", "val_value", "trial_val_value"):
        old = key.replace("value", "accuracy")
        if key not in record and old in record:
            record[key] = record[old]
    return record


def _run_settings(settings: HpoSettings, url: str, combination: Combination) -> Any:
    from search.runner import RunSettings

    return RunSettings(
        trials=combination.spec.trials,
        study=combination.study_name(settings.prefix),
        space=settings.space,
        storage=url,
        sampler=combination.spec.sampler,
        pruner=combination.spec.pruner,
        reports_per_epoch=combination.spec.reports_per_epoch,
        epochs=settings.epochs,
        seed=combination.seed,
        device=settings.device,
        data_dir=settings.data_dir,
        heartbeat=settings.heartbeat,
        quiet=True,
        warm_start=_warm_sources(settings, combination),
        warm_start_storage=url,
    )


def _warm_sources(settings: HpoSettings, combination: Combination) -> tuple[str, ...]:
    """The reference's studies of every seed but the one measured, for a warm-started strategy."""
    if not combination.spec.warm:
        return ()
    reference = next(spec for spec in specs(settings) if spec.name == reference_of(settings))
    return tuple(
        Combination(reference, seed).study_name(settings.prefix)
        for seed in range(settings.seeds)
        if seed != combination.seed
    )


def _record_test_value(study: optuna.Study, settings: HpoSettings) -> None:
    from search import retrain, runner
    from search.tasks import placement
    from search.train import pick_device

    stored = study.user_attrs[studies.SETTINGS_ATTR]
    space = runner.stored_space(study)
    task = resolve.resolve(space, data_dir=settings.data_dir)
    metric = studies.metric_of(study)
    results = {t.number: studies.trial_result(t, metric) for t in study.get_trials(deepcopy=False)}
    candidates = [t for t in study.get_trials(deepcopy=False) if results[t.number] is not None]
    if not candidates:
        return
    best = max(candidates, key=lambda t: metric.key(results[t.number]))
    if task.train is not None:
        # A training function of the user's has no test split the harness knows: its best
        # value stands for it, as the report's table says.
        value = results[best.number]
        study.set_user_attr(
            TEST_ATTR,
            {
                "trial": best.number,
                "metric": metric.name,
                "value": value,
                "val_value": value,
                "trial_val_value": value,
                "epoch": studies.trial_attrs(best).get("epochs_run"),
                "own_value": True,
            },
        )
        return
    device = pick_device(settings.device)
    data = placement.load_data(
        task, space, seed=stored["seed"], device=device, data_dir=settings.data_dir
    )
    again = retrain.retrain(
        task,
        space,
        data,
        best.params,
        seed=studies.trial_attrs(best)["seed"],
        epochs=math.ceil(
            studies.trial_attrs(best).get("epochs_run", len(best.intermediate_values))
        ),
        schedule_epochs=stored["epochs"],
        reports_per_epoch=studies.reports_per_epoch(best),
    )
    test = retrain.test_value(again.model, task, data, task.load(settings.data_dir, False, False))
    study.set_user_attr(
        TEST_ATTR,
        {
            "trial": best.number,
            "metric": metric.name,
            "value": test,
            "val_value": again.value,
            "trial_val_value": results[best.number],
            "epoch": again.best_epoch,
        },
    )


def compare(settings: HpoSettings, url: str) -> Comparison:
    """Read every combination's study from ``url`` and compare the strategies over seeds."""
    storage = studies.open_storage(url, create=False)
    names = set(studies.study_names(storage))
    by_strategy: dict[str, list[optuna.Study]] = {}
    spec_of = {spec.name: spec for spec in specs(settings)}
    for combination in combinations(settings):
        name = combination.study_name(settings.prefix)
        if name not in names:
            raise SearchError(f"study {name} is missing from {studies.describe(url)}; rerun bench")
        study = optuna.load_study(study_name=name, storage=storage)
        by_strategy.setdefault(combination.strategy, []).append(study)
    first_study = next(iter(by_strategy.values()))[0]
    first = first_study.user_attrs[studies.SETTINGS_ATTR]
    metric = studies.metric_of(first_study)
    reference = reference_of(settings)
    seeds_curves = {
        name: [_curves(s, first["epochs"], metric) for s in group]
        for name, group in by_strategy.items()
    }
    resamples = curves.resample_indices(settings.seeds, np.random.default_rng(0))
    reference_cost = [c.cost for c in seeds_curves[reference]]
    reference_training = [c.training for c in seeds_curves[reference]]
    strategies = []
    for name, group in by_strategy.items():
        by_cost = [c.cost for c in seeds_curves[name]]
        training = [c.training for c in seeds_curves[name]]
        strategies.append(
            Strategy(
                name=name,
                spec=spec_of[name],
                by_seconds=by_cost,
                by_trials=[c.trials for c in seeds_curves[name]],
                final=curves.final(by_cost, resamples),
                to_target=curves.time_to_target(by_cost, reference_cost, resamples),
                to_target_training=curves.time_to_target(training, reference_training, resamples),
                training_seconds=float(np.mean([c.costs[-1] for c in training])),
                search_seconds=float(
                    np.mean([a.costs[-1] - b.costs[-1] for a, b in zip(by_cost, training)])
                ),
                epochs_saved=float(np.mean([c.epochs_saved for c in seeds_curves[name]])),
                test_values=[test_record(s)["value"] for s in group if TEST_ATTR in s.user_attrs],
            )
        )
    return Comparison(
        settings,
        url,
        reference,
        strategies,
        first["epochs"],
        first["task"],
        first["model"],
        evidence=evidence(by_strategy, spec_of, metric),
        metric=metric,
    )


def evidence(
    by_strategy: dict[str, list[optuna.Study]],
    spec_of: dict[str, StrategySpec],
    metric: studies.Metric,
) -> Evidence | None:
    """Rank agreement of early and final metrics over the trials of random search without
    pruning, from the strategy of that kind that reports most often (None if there is none)."""
    unpruned = [spec for spec in spec_of.values() if (spec.sampler, spec.pruner) == REFERENCE]
    if not unpruned:
        return None
    spec = max(unpruned, key=lambda s: (s.reports_per_epoch, s.trials))
    trials = [
        t
        for study in by_strategy[spec.name]
        for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    finals = [studies.trial_result(t, metric) for t in trials]
    early = [studies.epoch_values(t) for t in trials]
    rng = np.random.default_rng(0)
    at = {
        epochs: curves.rank_agreement([a.get(epochs, np.nan) for a in early], finals, rng)
        for epochs in EVIDENCE_EPOCHS
        if all(epochs in a for a in early)
    }
    return Evidence(spec.name, len(trials), at)


@dataclass(frozen=True)
class _SeedCurves:
    cost: curves.StepCurve  # by training, sampling and pruning seconds
    training: curves.StepCurve  # by training seconds alone
    trials: curves.StepCurve  # by trial count
    epochs_saved: float  # share of the epochs a study without pruning would have run


def _curves(study: optuna.Study, epochs: int, metric: studies.Metric) -> _SeedCurves:
    """Best so far (as a score, better higher) against cumulative cost, against training
    seconds and against configurations tried; and the share of ``epochs`` per configuration that
    pruning saved. A paused configuration's continuation costs what it trained, and is no new
    configuration."""
    trials = [t for t in study.get_trials(deepcopy=False) if studies.is_finished(t)]
    results = [studies.trial_result(t, metric) for t in trials]
    results = [None if r is None else metric.key(r) for r in results]
    attrs = [studies.trial_attrs(t) for t in trials]
    training = [a.get("seconds", 0.0) for a in attrs]
    search = [a.get("sampling_seconds", 0.0) + a.get("pruning_seconds", 0.0) for a in attrs]
    new = [0.0 if studies.continues(t) is not None else 1.0 for t in trials]
    trained = sum(a.get("epochs_run", 0) - a.get("resumed_from_epoch", 0) for a in attrs)
    return _SeedCurves(
        curves.StepCurve.best_so_far([t + s for t, s in zip(training, search)], results),
        curves.StepCurve.best_so_far(training, results),
        curves.StepCurve.best_so_far(new, results),
        1 - trained / (sum(new) * epochs) if trials else 0.0,
    )


def _fmt_ratio(value: float) -> str:
    return "never" if not np.isfinite(value) else f"{value:.2f}"
