"""Successive halving's geometry and its rung decisions: which steps are rungs, which bracket a
configuration belongs to, and which of a rung's configurations go on, told apart only where the
validation set can tell them apart.

A rung is a step (a report: 1 .. epochs × reports per epoch) at which a configuration pauses until
every configuration of its bracket has reached it; then the top 1/η go on (`search.promotion`
does the pausing and promoting on the study's storage). One bracket is successive halving as
Jamieson and Talwalkar published it; several, each starting η times later with fewer
configurations, are Hyperband (Li et al.). This module knows nothing of storages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import optuna

ETA = 3  # the reduction factor: a rung keeps its top third
# What a trial carries in its system attrs (Optuna copies them into a retry, as it should here):
BRACKET = "search:bracket"  # the bracket of the configuration, fixed when it starts
PAUSE_AT = "search:pause_at"  # the step at which it pauses next; absent: it runs to the end
CONTINUES = "search:continues"  # on a continuation: the number of the paused trial it continues
DECISION = "search:rung:"  # + "BRACKET:RUNG", a study system attr: a rung's decision, once taken
Z = 1.0  # differences within this many standard errors are not told apart
# Configurations per successive-halving bracket, and per cycle of Hyperband's brackets. Fixed,
# not taken from the target, so that a study resumed with more --trials keeps its brackets.
BRACKET_SIZE, HYPERBAND_CYCLE = 20, 60
SMALL_ERROR = 0.05  # a validation set is too small to prune on where an accuracy's error exceeds it


@dataclass(frozen=True)
class Bracket:
    """The rungs (steps, increasing, all short of the full budget) of a bracket, and how many
    configurations a full one holds."""

    rungs: tuple[int, ...]
    size: int


def cycle(steps: int, *, hyperband: bool, first: int = 1, eta: int = ETA) -> tuple[Bracket, ...]:
    """The brackets that a study's configurations fill in turn, over and over: successive
    halving's one, with rungs at ``first`` × η^k short of ``steps``, `BRACKET_SIZE` strong; or
    Hyperband's, the most exploratory first, `HYPERBAND_CYCLE` configurations between them in
    Hyperband's proportions (so that each bracket costs about the same)."""
    ladder: list[int] = []
    while first * eta ** len(ladder) < steps:
        ladder.append(first * eta ** len(ladder))
    if not hyperband:
        return (Bracket(tuple(ladder), BRACKET_SIZE),)
    count = len(ladder) + 1
    weights = [math.ceil(count / (s + 1)) * eta**s for s in range(count - 1, -1, -1)]
    sizes = allocate(HYPERBAND_CYCLE, [w / sum(weights) for w in weights])
    return tuple(
        Bracket(tuple(ladder[len(ladder) - s :]) if s else (), max(1, size))
        for s, size in zip(range(count - 1, -1, -1), sizes)
    )


def allocate(total: int, weights: list[float]) -> list[int]:
    """``total`` split by ``weights`` (largest remainders), in order."""
    exact = [total * w for w in weights]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (sizes[i] - exact[i], i))
    for i in by_remainder[: total - sum(sizes)]:
        sizes[i] += 1
    return sizes


def promoted_count(entrants: int, eta: int = ETA) -> int:
    """How many of a rung's ``entrants`` go on: the top 1/η, at least one."""
    return max(1, entrants // eta)


@dataclass(frozen=True)
class Noise:
    """How finely a validation accuracy resolves: ``examples`` scored, ``chance`` the accuracy
    of always answering the commonest class."""

    examples: int
    chance: float

    def error(self, accuracy: float) -> float:
        """The standard error of an accuracy over ``examples``: sqrt(p(1-p)/n), with p kept half
        an example inside 0 and 1 (a perfect score is not exact either)."""
        n = self.examples
        p = min(max(accuracy, 0.5 / n), 1 - 0.5 / n)
        return math.sqrt(p * (1 - p) / n)

    def apart(self, a: float, b: float) -> bool:
        """Whether accuracies ``a`` and ``b`` differ by more than the noise of their difference."""
        return abs(a - b) > Z * math.hypot(self.error(a), self.error(b))

    def at_chance(self, accuracy: float) -> bool:
        return accuracy <= self.chance + Z * self.error(self.chance)

    def too_small(self) -> bool:
        """Whether an accuracy near 50 % is uncertain by more than 0.05 (fewer than 100
        examples): a pruner deciding early then ranks trials on differences it cannot see."""
        return self.error(0.5) > SMALL_ERROR

    def warning(self) -> str:
        return (
            f"the validation split has {self.examples} examples: an accuracy on it is uncertain "
            f"by about ±{self.error(0.5):.2f} (one standard error at 50 %), so a pruner's early "
            f"decisions rest on differences it cannot see; give it at least "
            f"{math.ceil(0.25 / SMALL_ERROR**2)} examples (raise [task] val_fraction, or add data), "
            "or run with --pruner none"
        )


@dataclass(frozen=True)
class Candidate:
    """A configuration at a rung: its number, its score there (larger is better) and its training
    loss at the same report (NaN where none is known)."""

    number: int
    score: float
    train_loss: float


def tiers(candidates: list[Candidate], noise: Noise | None) -> list[list[Candidate]]:
    """The candidates in tiers, best first. A tier holds the scores its top cannot be told apart
    from (with ``noise``; exact ties without it), the lower training loss first; every
    configuration at chance is in one last tier, ranked on its training loss alone."""

    def by_loss(tier: list[Candidate]) -> list[Candidate]:
        return sorted(tier, key=lambda c: (_loss_key(c.train_loss), -c.score, c.number))

    ordered = sorted(candidates, key=lambda c: (-c.score, c.number))
    chance = [c for c in ordered if noise is not None and noise.at_chance(c.score)]
    found: list[list[Candidate]] = []
    tier: list[Candidate] = []
    for candidate in (c for c in ordered if c not in chance):
        top = tier[0].score if tier else None
        if top is not None and (
            noise.apart(top, candidate.score) if noise else top != candidate.score
        ):
            found.append(by_loss(tier))
            tier = []
        tier.append(candidate)
    return [by_loss(t) for t in (*found, tier, chance) if t]


def rank(candidates: list[Candidate], noise: Noise | None) -> list[Candidate]:
    """Best first: `tiers`, one after another."""
    return [c for tier in tiers(candidates, noise) for c in tier]


def choose(
    candidates: list[Candidate], noise: Noise | None, keep: int, *, carry: bool
) -> list[Candidate]:
    """The ``keep`` best, where the validation set can tell. A tier that the cut would split goes
    on whole with ``carry`` (up to ``keep`` more: a tie carried to the next rung, where more
    training tells its members apart), or else by training loss."""
    chosen: list[Candidate] = []
    for tier in tiers(candidates, noise):
        if len(chosen) >= keep:
            break
        room = keep - len(chosen)
        chosen += tier[: len(tier) if carry and len(tier) <= room + keep else room]
    return chosen


def _loss_key(loss: float) -> float:
    return loss if math.isfinite(loss) else math.inf


class Halving(optuna.pruners.BasePruner):
    """Successive halving (``hyperband``: Hyperband) that pauses and promotes: it never stops a
    trial itself (`prune` is always False); the objective pauses a trial at its step from
    `search.promotion.pause_at`, and `search.promotion.decide` promotes.

    Configurations fill brackets in order of starting, a `cycle` of them after another, as BOHB
    runs its brackets one after another: the sampler of a later bracket learns from the higher
    rungs of those before it. Brackets are numbered 0, 1 ... in that order.

    A worker sets ``target`` (the study's configurations), ``noise`` (its validation set's, for
    an accuracy) and ``checkpoint_dir`` (where paused trials keep their state) before its first
    trial.
    """

    def __init__(self, steps: int, *, hyperband: bool = False) -> None:
        self.steps = steps
        self.cycle = cycle(steps, hyperband=hyperband)
        self.target = 0
        self.noise: Noise | None = None
        self.checkpoint_dir: Path | None = None
        self.deciding_seconds = 0.0  # rung decisions' wall time, not yet charged to a trial

    @property
    def levels(self) -> list[int]:
        """Every step at which some bracket pauses, and the full budget."""
        return sorted({step for b in self.cycle for step in b.rungs} | {self.steps})

    def bracket(self, number: int) -> Bracket:
        return self.cycle[number % len(self.cycle)]

    def bracket_of(self, index: int) -> int:
        """The bracket of the study's configuration ``index`` (0, 1 ... in order of starting)."""
        turn, place = divmod(index, sum(b.size for b in self.cycle))
        for position, bracket in enumerate(self.cycle):
            if place < bracket.size:
                return turn * len(self.cycle) + position
            place -= bracket.size
        raise AssertionError("a place beyond the cycle")  # the sizes add up to the cycle

    def size(self, number: int) -> int:
        """How many configurations bracket ``number`` holds with the study's target: a full
        bracket's, or what is left of the target (the last may be smaller; later ones, empty)."""
        turn, position = divmod(number, len(self.cycle))
        before = turn * sum(b.size for b in self.cycle) + sum(b.size for b in self.cycle[:position])
        return max(0, min(self.cycle[position].size, self.target - before))

    def charge(self) -> float:
        """The rung decisions' wall time since the last charge: the next trial pays it."""
        seconds, self.deciding_seconds = self.deciding_seconds, 0.0
        return seconds

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return False
