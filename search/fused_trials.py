"""A study's trials in fused groups: K trials asked together, trained as one model, told apart.

With ``--fuse K`` a worker asks the sampler for one trial, then for up to K-1 more whose shape
params (every param the model is built from, and the batch size) are fixed to the first one's, by
Optuna's `PartialFixedSampler` over the study's own sampler: the recipe's params (learning rate,
optimizer, schedule, weight decay ...) are sampled as usual, with TPE's constant liar seeing the
group's running trials. Each trial claims its own place at the target (`search.claims`), beats
its own heartbeat, reports and is pruned on its own, and is told to Optuna on its own, so that a
study trained in groups looks, trial by trial, like one trained a trial at a time, with the same
seeds giving the same results (`search.fused_train`). The objective's own bookkeeping (attrs,
notes, trackers, checkpoints) is `search.objective.Objective`'s, run per member.

Trials that cannot join a group train alone, as `search.target` runs any trial: a retry or a
continuation (it resumes from its checkpoint), and any trial a sampler handed back with another
shape (one queued by a warm start).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import torch
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from search import claims
from search.contract import LOOP_PARAMS
from search.errors import OutOfMemory, Surplus, TrialFailure
from search.fused_train import Member, fit_fused, shape_key
from search.objective import Objective, TrialRun, predict_oom

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def waiting_trials(study: optuna.Study) -> bool:
    """Whether trials wait to run (retries, queued ones): they run alone, before a group forms."""
    return bool(study._storage.get_all_trials(study._study_id, False, (TrialState.WAITING,)))


def shape_params(params: dict[str, Any]) -> dict[str, Any]:
    """The params a group shares: all but the training loop's, and with them the batch size."""
    return {k: v for k, v in params.items() if k not in LOOP_PARAMS or k == "batch_size"}


class FusedGroups:
    """``groups(study, places)``: ask up to ``size`` trials (no more than ``places``, the target's
    places left), train those of one shape together and tell each to Optuna.

    Like Optuna's own loop, it stops the worker (raises, once every trial is told) on an error
    that is not a trial's failure (the user's code raising, a storage that stopped answering,
    Ctrl-C); the trials it cut short are told failed, with their reason.
    """

    def __init__(
        self, objective: Objective, size: int, target: int, callbacks: Sequence[Callback] = ()
    ) -> None:
        self.objective = objective
        self.size = size
        self.target = target
        self.callbacks = list(callbacks)

    def __call__(self, study: optuna.Study, places: int) -> bool:
        """Run a group in up to ``places`` places; False (nothing run) where only one place is
        left or trials wait to run alone."""
        if places < 2 or waiting_trials(study):
            return False
        group = _Asked(study, self)
        with contextlib.ExitStack() as heartbeats:
            try:
                group.ask(min(self.size, places), heartbeats)
                for run in group.alone:
                    group.tell(run, _caught(lambda run=run: self.objective.complete(run)))
                self._train(group)
            except BaseException as error:
                for run in group.runs + group.alone:
                    if not group.told(run):
                        ended = _caught(
                            lambda run=run, error=error: self.objective.finish(run, error)
                        )
                        with contextlib.suppress(Exception):  # a storage down: it goes stale
                            group.tell(run, ended)
                raise
        if group.error is not None:
            raise group.error
        return True

    def _train(self, group: _Asked) -> None:
        objective = self.objective
        for run in group.runs:
            try:
                predict_oom(run.trials, run.size)
            except OutOfMemory as error:
                group.tell(run, _caught(lambda run=run, error=error: objective.finish(run, error)))
        runs = [run for run in group.runs if not group.told(run)]
        if not runs:
            return
        members = [
            Member(run.model, run.hp, run.seed, run.report, run.checkpoint, history=run.history)
            for run in runs
        ]
        try:
            report = fit_fused(
                members,
                objective.data,
                epochs=objective.epochs,
                scoring=objective.task.scoring,
                reports_per_epoch=objective.reports_per_epoch,
                step=objective.step,
            )
        except torch.cuda.OutOfMemoryError:
            stopped: list[BaseException | None] = [run.out_of_memory() for run in runs]
        else:
            stopped = [member.stopped for member in members]
            for run in runs:
                run.step_report = report
        for run, stop in zip(runs, stopped, strict=True):
            run.attrs["fused"] = run.share = len(runs)  # trained in a group of this many
            group.tell(run, _caught(lambda run=run, stop=stop: objective.finish(run, stop)))


class _Asked:
    """The trials one group asked for: ``runs`` to train together, ``alone`` to train by
    themselves; which of them are told, and the first error that is to stop the worker."""

    def __init__(self, study: optuna.Study, groups: FusedGroups) -> None:
        self.study = study
        self.groups = groups
        self.runs: list[TrialRun] = []
        self.alone: list[TrialRun] = []
        self.error: BaseException | None = None
        self._told: set[int] = set()

    def ask(self, size: int, heartbeats: contextlib.ExitStack) -> None:
        """Up to ``size`` trials, each with its place claimed and its heartbeat beating (those
        that train alone take places too)."""
        study, sampler = self.study, self.study.sampler
        try:
            while len(self.runs) + len(self.alone) < size:
                with warnings.catch_warnings():
                    # Optuna warns that heartbeats are meant for its own loop: this beats them.
                    warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                    trial = study.ask()
                heartbeats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
                if not claims.is_continuation(trial) and not claims.claim(
                    study, trial._trial_id, self.groups.target
                ):
                    trial.set_user_attr("fail_reason", "surplus")
                    self._tell_trial(trial, Surplus(self.groups.target))
                    return
                run = self.groups.objective.start(trial)
                first = self.runs[0] if self.runs else run
                if run.origin != trial.number or _shape(run) != _shape(first):
                    self.alone.append(run)  # a retry resumes from its checkpoint; another shape
                    continue
                if not self.runs:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        study.sampler = optuna.samplers.PartialFixedSampler(
                            shape_params(run.params), sampler
                        )
                self.runs.append(run)
        finally:
            study.sampler = sampler

    def told(self, run: TrialRun) -> bool:
        return run.trial._trial_id in self._told

    def tell(self, run: TrialRun, outcome: Any) -> None:
        """Tell Optuna how ``run`` ended: its value, or what `Objective.finish` raised."""
        self._tell_trial(run.trial, outcome)

    def _tell_trial(self, trial: optuna.Trial, outcome: Any) -> None:
        study = self.study
        self._told.add(trial._trial_id)
        if isinstance(outcome, optuna.TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
        elif isinstance(outcome, BaseException):
            study.tell(trial, state=TrialState.FAIL)
            if not isinstance(outcome, TrialFailure) and self.error is None:
                self.error = outcome  # as a trial alone would, it stops the worker once told
        else:
            study.tell(trial, outcome)
        frozen = study._storage.get_trial(trial._trial_id)
        for callback in self.groups.callbacks:
            callback(study, frozen)


def _shape(run: TrialRun) -> tuple[object, ...]:
    return shape_key(run.model, run.hp)


def _caught(finish: Callable[[], Any]) -> Any:
    """``finish()``'s value, or the exception it raised (how `Objective.finish` tells an end)."""
    try:
        return finish()
    except BaseException as error:
        return error
