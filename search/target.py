"""Run trials on a study until it has its target of finished trials: the one loop every worker runs.

`search run` (any ``--jobs``) and `search worker` run this loop in each of their processes, and
any number of them may share a study, on one machine or many, started at any time. Each process
runs one trial at a time while the study's finished trials and the running trials that hold a
place fall short of the target, and waits (retrying trials whose heartbeat went stale) while the
rest run elsewhere. A trial takes its place with an exact claim (`search.claims`): one started
after the last place went fails at once as ``surplus``, a reason that neither counts towards the
target nor gets retried, so the study ends with exactly its target. A storage that stops answering
(a database server restarting) is retried with back-off; a trial it cut short is retried from its
checkpoint once its heartbeat is stale.

This module needs no torch: `search bench workers` drives it with an objective that only sleeps.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc

from search import claims
from search import study as studies
from search.errors import StorageError, Surplus, TrialFailure, first_line

T = TypeVar("T")

# What a storage raises while its server is down or restarting.
UNREACHABLE = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)


class Claimed:
    """Run the objective only once the trial has claimed one of the study's places."""

    def __init__(self, objective: Callable[[optuna.Trial], Any], target: int) -> None:
        self.objective = objective
        self.target = target

    def __call__(self, trial: optuna.Trial) -> Any:
        # A continuation of a paused trial takes that trial's place (`search.promotion`).
        if not claims.is_continuation(trial) and not claims.claim(
            trial.study, trial._trial_id, self.target
        ):
            trial.set_user_attr("fail_reason", "surplus")
            raise Surplus(self.target)
        return self.objective(trial)


def run_until_target(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    target: int,
    url: str,
    poll: float = 1.0,
    requeue_every: float = 10.0,
    timeout: float | None = None,
    reconnect_timeout: float = 300.0,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    name: str = "worker",
    decide: Callable[[optuna.Study], bool] | None = None,
    group: Callable[[optuna.Study, int], bool] | None = None,
) -> None:
    """Run trials one at a time until ``study`` has ``target`` finished trials (or ``timeout``).

    Trials of dead or interrupted workers are queued again every ``requeue_every`` seconds (a
    stale heartbeat takes three intervals to show, so checking more often finds nothing new) and
    on every wait; a wait polls the counts every ``poll`` seconds. With ``decide`` (successive
    halving's rung decisions, `search.promotion.decide`), rungs are decided after every trial
    and before the loop ends: a decision can give paused trials their continuations. With
    ``group`` (`search.fused_trials.FusedGroups`), trials run in fused groups: it is offered the
    places left, and runs a group in them or declines (returns False) for a trial alone.

    Raises:
        StorageError: the storage did not answer for ``reconnect_timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    admitted = Claimed(objective, target)
    requeued = -math.inf

    def step() -> bool:
        """One trial, or a wait while the rest run elsewhere; True once the target is met."""
        nonlocal requeued
        if time.monotonic() - requeued >= requeue_every:
            studies.requeue_unfinished(study)  # trials of dead workers go stale, then run again
            requeued = time.monotonic()
        now = claims.counts(study)
        if now.waiting:
            pass  # a promoted configuration's next stretch: it runs in no new place
        elif now.finished >= target and not now.continuing:
            # Every place is taken and nothing continues, unless a full rung is undecided.
            return decide is None or not decide(study)
        elif now.finished + now.running >= target:
            # Unclaimed running trials are about to claim (or fail as surplus): starting another
            # beside them would likely make a surplus trial; and continuations running elsewhere
            # may lead to more.
            time.sleep(poll)  # wait for them to finish, or to go stale and be retried here
            requeued = -math.inf
            if decide is not None:
                decide(study)  # a rung that the worker which filled it died before deciding
            return False
        if group is not None and group(study, target - now.finished - now.running):
            if decide is not None:
                decide(study)
            return False
        try:
            # None when there are none: Optuna then skips reading the finished trial back for them.
            study.optimize(
                admitted, n_trials=1, catch=(TrialFailure,), callbacks=list(callbacks) or None
            )
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # this trial's heartbeat was cut off, it went stale, and a retry took it over
        if decide is not None:
            decide(study)
        return False

    while deadline is None or time.monotonic() < deadline:
        if retrying(step, url=url, name=name, reconnect_timeout=reconnect_timeout):
            return


def retrying(
    action: Callable[[], T], *, url: str, name: str = "worker", reconnect_timeout: float = 300.0
) -> T:
    """``action()``, called again with back-off (1 s doubling to 30 s) while the storage at ``url``
    does not answer, for up to ``reconnect_timeout`` seconds.

    Raises:
        StorageError: the storage stayed unreachable.
    """
    backoff, down_since = 1.0, None
    while True:
        try:
            return action()
        except Exception as error:
            cause = _unreachable(error)
            if cause is None:
                raise
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > reconnect_timeout:
                raise StorageError(
                    f"storage {studies.describe(url)}: unreachable for {reconnect_timeout:.0f} s: "
                    f"{first_line(cause)}"
                ) from None
            print(
                f"{name}: storage unreachable ({first_line(cause)}); retrying in {backoff:.0f} s",
                file=sys.stderr,
            )
            time.sleep(backoff)
            backoff = min(2 * backoff, 30.0)


def _unreachable(error: BaseException | None) -> BaseException | None:
    """The storage error ``error`` is, or arose while handling; None if there is none.

    Optuna's own bookkeeping can fail with another error once the storage is gone (its trial
    runner reads a variable that the failed storage call never set), and ours re-raises storage
    failures as `StorageError`, so the whole chain is searched.
    """
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, UNREACHABLE):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None
