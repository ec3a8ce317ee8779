"""A user's own training function (``task.train`` / ``search.run(train=fn)``), resolved and checked.

The function is ``fn(params, report)``: it trains however it likes on the params a trial sampled,
calls ``report(step, value, **metrics)`` as it goes (`search.own_objective.Report`, which stops
the trial when the pruner says so), and returns the final value, or ``(value, model)`` to make
the model exportable. Here it is found (a ``FILE.py:NAME`` / ``module:NAME`` reference, or the
object given from Python) and its signature checked before a study exists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search import given, references
from search.errors import TaskError


@dataclass(frozen=True)
class TrainFunction:
    """A resolved training function.

    Attributes:
        reference: as the space names it: ``train.py:train``, or a marker of an object given
            from Python.
        fn: the callable.
        base: the folder a ``FILE.py:NAME`` reference is relative to.
    """

    reference: str
    fn: Callable[..., Any]
    base: Path | None = None

    @property
    def name(self) -> str:
        return self.reference.rpartition(":")[2]

    def __reduce__(self) -> Any:
        """Into a worker process: imported again there by reference, or by value when it was
        given from Python (`search.given`)."""
        if given.is_marker(self.reference):
            return _by_value, (self.reference, given.dumps(self.fn))
        return resolve, (self.reference, self.base, None)


def _by_value(reference: str, fn: bytes) -> TrainFunction:
    return TrainFunction(reference, given.loads(fn))


def resolve(reference: str, base: Path | None, value: Callable[..., Any] | None) -> TrainFunction:
    """The function ``reference`` names (``value`` for a marker), its signature checked.

    Raises:
        TaskError: it cannot be imported, is not callable, or does not take (params, report).
    """
    fn = value if given.is_marker(reference) else references.load(reference, base or Path("."))
    if fn is None or not callable(fn):
        raise TaskError(f"{reference} is not a callable")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return TrainFunction(reference, fn, base)  # a builtin or extension: called as it is
    try:
        signature.bind({}, None)
    except TypeError:
        raise TaskError(
            f"{given.name_of(fn)}{signature} cannot be called as fn(params, report): a training "
            "function takes the trial's params (a dict) and report, the callback it reports to"
        ) from None
    return TrainFunction(reference, fn, base)
