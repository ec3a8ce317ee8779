"""Exceptions. User-facing problems are `SearchError`s: the CLI prints their one-line message.

`TrialFailure` is different: it is not a user error but a trial that failed for a reason that
belongs to its configuration (it diverged, later: it ran out of memory). Such a trial counts as
finished, so a study's `--trials` target is reached even when some configurations are bad.
"""

from __future__ import annotations


class SearchError(Exception):
    """A problem the user can fix; the message names the bad value and where it came from."""


class SpaceError(SearchError):
    """A space file is missing or malformed."""


class TaskError(SearchError):
    """An unknown task or model, or a task's data is missing."""


class StorageError(SearchError):
    """A storage URL is malformed or unreachable, or a study is missing."""


class SettingsError(SearchError):
    """A command-line setting is out of range or conflicts with the study it resumes."""


class TrialError(SearchError):
    """A trial raised an error that says nothing about its configuration (the user's model, loss
    or metric failed on data the check before the study did not reach): the run stops at once,
    naming the trial and the line where it failed; finished trials are kept."""


class TrialFailure(Exception):
    """A trial failed because of its configuration; it counts towards the study's target.

    Attributes:
        reason: a short machine-readable word stored in the trial's ``fail_reason`` user attr.
        epoch: the epoch (1-based) at which the trial stopped, a fraction when it stopped at a
            report inside one; 0 before training began.
    """

    def __init__(self, reason: str, epoch: float, detail: str = "") -> None:
        where = f"at epoch {epoch}" if epoch else "before training"
        super().__init__(f"{reason} {where}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.epoch = epoch


class Diverged(TrialFailure):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: float, loss: float) -> None:
        super().__init__("diverged", epoch, f"train loss {loss}")


class OutOfMemory(TrialFailure):
    """The device (or the CPU allocator) ran out of memory for this configuration."""

    def __init__(self, epoch: int, detail: str) -> None:
        super().__init__("oom", epoch, detail)


class Surplus(TrialFailure):
    """Workers on several machines started more trials than the study's target still needed."""

    def __init__(self, target: int) -> None:
        super().__init__("surplus", 0, f"the study's target of {target} trials was already met")


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line, or its type where it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
