"""Pause and promote on Optuna's storage: successive halving (and Hyperband) as published, which
fills a rung before its top 1/η go on from where they paused.

Optuna's pruners can only stop a trial. Under `search.rungs.Halving` a trial that reaches its rung
pauses instead: `search.train.fit` saves its state at that report and the trial ends PRUNED with
``paused_at`` among its attrs. Once every configuration of the rung has reached it (or failed),
`decide` ranks them (`search.rungs.rank`) and gives each of the top 1/η a continuation: a new
WAITING trial with the same params, linked to the paused one as Optuna's retry is linked to its
original (``failed_trial`` names the configuration's first trial, so that its seed and checkpoint
follow it; ``search:continues`` names the paused trial). It restores the paused state, reports
the history so far again (as a retry does) and trains on to the next rung. The others never train
again. A configuration's trials are its segments, and the last one holds its whole curve: the
views show that one (`search.study.superseded` names the rest).

A rung is decided once, whoever finds it full: under the study's decision lock
(`search.claims.decision_lock`), a continuation is made only for a paused trial that has none, and
then the decision is recorded on the study. A worker killed anywhere in that leaves the next one
to finish it. Every worker decides after each of its trials, while it waits and before it stops,
so a rung left undecided by a crash is decided on resume. A configuration's place in the study's
target is its first trial's (`search.claims`): continuations take none.

The sampler learns from rungs (`OnRungs`): it sees one finished trial per configuration, valued at
the highest rung that enough configurations reached, as BOHB fits its model on the largest budget
with enough observations, instead of every paused or stopped trial as a bad one.

A `Configuration` that failed for good for a reason that is no verdict on it (an error) is void:
the configuration sampled next takes its place in the bracket, so that a rung never waits for it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from search import claims
from search import study as studies
from search.checkpoint import trial_path
from search.rungs import (
    BRACKET,
    CONTINUES,
    DECISION,
    PAUSE_AT,
    Candidate,
    Halving,
    choose,
    promoted_count,
    rank,
)


class Paused(optuna.TrialPruned):
    """The trial reached its rung: it stops here, its state kept, until the rung is decided."""

    def __init__(self, step: int, epoch: float) -> None:
        super().__init__(f"paused at epoch {epoch:g}")
        self.step = step


@dataclass
class Configuration:
    """A sampled configuration and its trials (segments), oldest first."""

    origin: int
    segments: list[FrozenTrial] = field(default_factory=list)

    @property
    def latest(self) -> FrozenTrial:
        return self.segments[-1]

    @property
    def bracket(self) -> int | None:
        """Its bracket (None until its first trial is given one)."""
        for segment in reversed(self.segments):
            if BRACKET in segment.system_attrs:
                return int(segment.system_attrs[BRACKET])
        return None

    def curve(self) -> dict[int, float]:
        """Its validation metric at every step any of its segments reported."""
        values: dict[int, float] = {}
        for segment in self.segments:
            values.update(segment.intermediate_values)
        return values

    def reported_at(self, step: int) -> int | None:
        """The step of its report at rung ``step``: that one, or (a training function that
        reports less often) the first after it; None if there is none."""
        later = [s for s in self.curve() if s >= step]
        return min(later) if later else None

    def train_loss(self, step: int) -> float:
        for segment in reversed(self.segments):
            losses = studies.trial_attrs(segment).get("train_loss") or []
            if step <= len(losses) and losses[step - 1] is not None:
                return float(losses[step - 1])
        return float("nan")

    def void(self) -> bool:
        """Whether it came to nothing that counts: it failed for a reason that is no verdict on
        its configuration (an error), for good. A configuration sampled after it takes its place."""
        latest = self.latest
        return latest.state == TrialState.FAIL and self.ended() and not studies.is_finished(latest)

    def paused_segment(self, step: int) -> FrozenTrial | None:
        """Its segment that paused at ``step``, if one did."""
        for segment in self.segments:
            if segment.state == TrialState.PRUNED and paused_at(segment) == step:
                return segment
        return None

    def reached(self, step: int, before: int | None) -> bool:
        """Whether it is at rung ``step`` (paused there), or will never get there (its last
        segment, which started after rung ``before``, ended)."""
        if self.paused_segment(step) is not None:
            return True
        return self.ended() and (before is None or paused_at(self.latest) != before)

    def ended(self) -> bool:
        """Whether its last segment is over for good (no retry of it will come: one is queued
        for a trial interrupted or left without a heartbeat, up to `MAX_RETRIES`)."""
        latest = self.latest
        if latest.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return True
        if latest.state != TrialState.FAIL:
            return False
        retries = len(latest.system_attrs.get("retry_history", []))
        retried = latest.user_attrs.get("fail_reason") in (None, "interrupted")
        return not retried or retries >= studies.MAX_RETRIES


def paused_at(trial: FrozenTrial) -> int | None:
    """The step ``trial`` paused at; None if it did not pause."""
    return studies.trial_attrs(trial).get("paused_at") if trial.state == TrialState.PRUNED else None


def configurations(trials: Sequence[FrozenTrial]) -> list[Configuration]:
    """The study's configurations in order of starting: its trials grouped by the trial each
    retries or continues (surplus trials, which never ran, are none)."""
    found: dict[int, Configuration] = {}
    for trial in trials:
        if trial.user_attrs.get("fail_reason") == "surplus":
            continue
        origin = studies.original_number(trial)
        found.setdefault(origin, Configuration(origin)).segments.append(trial)
    return [found[origin] for origin in sorted(found)]


def pause_at(pruner: Halving, trial: optuna.Trial, trials: Sequence[FrozenTrial]) -> int | None:
    """The step at which ``trial`` pauses (None: it runs to the end). A new configuration is given
    its bracket here, by its place among the study's configurations; a continuation, or a retry,
    carries both in its system attrs."""
    attrs = trials[trial.number].system_attrs
    if BRACKET in attrs:
        return attrs.get(PAUSE_AT)
    origin = studies.original_number(trials[trial.number])
    found = configurations(trials)
    own = next(c for c in found if c.origin == origin)
    bracket = own.bracket  # a retry of a trial that died before it was given one has none
    if bracket is None:
        bracket = pruner.bracket_of(sum(1 for c in found if c.origin < origin and not c.void()))
    rungs = pruner.bracket(bracket).rungs
    trial.storage.set_trial_system_attr(trial._trial_id, BRACKET, bracket)
    if rungs:
        trial.storage.set_trial_system_attr(trial._trial_id, PAUSE_AT, rungs[0])
    return rungs[0] if rungs else None


def decide(study: optuna.Study, pruner: Halving) -> bool:
    """Promote the top of every rung that is full and not yet decided (brackets sized by
    ``pruner.target``); True if any was. Its wall time is charged to the worker's next trial, as
    its pruner's."""
    start = time.perf_counter()
    try:
        return _decide(study, pruner)
    finally:
        pruner.deciding_seconds += time.perf_counter() - start


def _decide(study: optuna.Study, pruner: Halving) -> bool:
    with claims.decision_lock(study):
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        decided = decisions(study)
        by_bracket: dict[int, list[Configuration]] = {}
        for configuration in configurations(trials):
            if configuration.bracket is not None and not configuration.void():
                by_bracket.setdefault(configuration.bracket, []).append(configuration)
        changed = False
        for number in sorted(by_bracket):
            bracket, size = pruner.bracket(number), pruner.size(number)
            entrants = by_bracket[number][:size]
            if len(entrants) < size or not size:
                continue  # configurations of this bracket are still to start
            before = None  # the rung the entrants come from
            for rung, step in enumerate(bracket.rungs):
                key = f"{DECISION}{number}:{rung}"
                if key in decided:
                    promoted = set(decided[key]["promoted"])
                elif all(c.reached(step, before) for c in entrants):
                    following = bracket.rungs[rung + 1] if rung + 1 < len(bracket.rungs) else None
                    _promote(study, pruner, entrants, step, following, key, carry=rung > 0)
                    changed = True
                    break  # its continuations start now: the next rung waits for them
                else:
                    break
                entrants = [c for c in entrants if c.origin in promoted]
                before = step
    return changed


def deciding_seconds(pruner: optuna.pruners.BasePruner) -> float:
    """The wall time of the rung decisions a worker took since its last trial began, which its
    next trial is charged as its pruner's (nothing under other pruners)."""
    return pruner.charge() if isinstance(pruner, Halving) else 0.0


def decisions(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """The rung decisions taken on ``study``, by ``search:rung:BRACKET:RUNG``."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {k: v for k, v in attrs.items() if k.startswith(DECISION)}


def _promote(
    study: optuna.Study,
    pruner: Halving,
    entrants: list[Configuration],
    step: int,
    following: int | None,
    key: str,
    *,
    carry: bool,
) -> None:
    metric = studies.metric_of(study)
    paused = {c.origin: c.paused_segment(step) for c in entrants}
    reported = {c.origin: c.reported_at(step) for c in entrants}
    candidates = [
        Candidate(c.origin, metric.key(c.curve()[at]), c.train_loss(at))
        for c in entrants
        if paused[c.origin] is not None and (at := reported[c.origin]) is not None
    ]
    noise = pruner.noise if metric.name == "accuracy" else None
    ranked = rank(candidates, noise)
    # Past the first rung a tie at the cut goes on whole: early, the training loss tells apart
    # what a few reports cannot; later, ties are between trained models, which it does not.
    chosen = choose(candidates, noise, promoted_count(len(entrants)), carry=carry)
    for candidate in chosen:
        configuration = next(c for c in entrants if c.origin == candidate.number)
        segment = paused[candidate.number]
        if not any(t.system_attrs.get(CONTINUES) == segment.number for t in configuration.segments):
            _continue(study, segment, configuration.origin, following)
    study._storage.set_study_system_attr(
        study._study_id,
        key,
        {
            "step": step,
            "entrants": len(entrants),
            "ranked": [c.number for c in ranked],
            "promoted": sorted(c.number for c in chosen),
        },
    )
    if pruner.checkpoint_dir is not None:
        for candidate in (c for c in ranked if c not in chosen):  # never trained again: state goes
            with contextlib.suppress(OSError):
                trial_path(pruner.checkpoint_dir, candidate.number).unlink(missing_ok=True)


def _continue(study: optuna.Study, paused: FrozenTrial, origin: int, pause: int | None) -> None:
    system_attrs = dict(paused.system_attrs)
    system_attrs.update({"failed_trial": origin, CONTINUES: paused.number})
    system_attrs.pop(PAUSE_AT, None)
    if pause is not None:
        system_attrs[PAUSE_AT] = pause
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=paused.params,
            distributions=paused.distributions,
            system_attrs=system_attrs,
        )
    )


class OnRungs(optuna.samplers.BaseSampler):
    """A sampler that sees each configuration once, as a finished trial valued at the highest
    rung (or the full budget) that at least ``enough`` configurations reached: its model is fit
    on the largest budget with enough observations, as BOHB's is. Running new configurations
    stay as they are (TPE's constant liar reads them)."""

    def __init__(self, sampler: optuna.samplers.BaseSampler, pruner: Halving) -> None:
        self.sampler = sampler
        self.pruner = pruner
        self.enough = max(2, int(getattr(sampler, "_n_startup_trials", 10)))
        self._view: tuple[int | None, Any] = (None, None)

    def _seen(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        if self._view[0] != trial.number:
            trials = study._get_trials(deepcopy=False, use_cache=True)
            self._view = (
                trial.number,
                studies.StudyView(study, rung_view(trials, self.pruner, self.enough)),
            )
        return self._view[1]

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(self._seen(study, trial), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(self._seen(study, trial), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.sampler.sample_independent(
            self._seen(study, trial), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def rung_view(trials: Sequence[FrozenTrial], pruner: Halving, enough: int) -> list[FrozenTrial]:
    """The trials a sampler sees under halving (see `OnRungs`)."""
    levels = pruner.levels
    found = configurations(trials)
    curves = {c.origin: c.curve() for c in found}
    reached = {level: sum(level in curves[c.origin] for c in found) for level in levels}
    full = [level for level in levels if reached[level] >= enough]
    level = full[-1] if full else max(levels, key=lambda lv: (reached[lv], -lv))
    seen = []
    for configuration in found:
        latest = configuration.latest
        if latest.state == TrialState.RUNNING and len(configuration.segments) == 1:
            seen.append(latest)  # a new configuration being trained (or sampled now)
        elif math.isfinite(curves[configuration.origin].get(level, math.nan)):
            seen.append(_finished_at(latest, curves[configuration.origin][level]))
    return sorted(seen, key=lambda t: t.number)  # as Optuna lists trials


def _finished_at(trial: FrozenTrial, value: float) -> FrozenTrial:
    seen = copy.copy(trial)
    seen.state = TrialState.COMPLETE
    seen.values = [value]
    seen.intermediate_values = {}
    return seen
