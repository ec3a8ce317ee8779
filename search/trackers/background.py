"""Calls to a remote tracker, made in order on a thread of their own, so that a tracker that is
slow or stops answering never holds up a trial.

A call that fails opens a pause: the calls queued during it are dropped, not tried, so that a dead
server costs one timeout rather than one per report. When a call goes through again (or the
worker stops), one line says what was not logged. A trial's own Optuna storage is never touched
from here: nothing of the study is lost, whatever the tracker does.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Item:
    """What a call logs, for the line that says what was not logged."""

    trial: int | None  # None: the study's own run
    what: str  # "start", "report", "end" ...
    count: int = 1  # reports sent in one call


class Background:
    """A queue of calls to one tracker and the thread that makes them."""

    def __init__(
        self, name: str, echo: Callable[[str], None], pause: float = 30.0, drain: float = 30.0
    ) -> None:
        self.name = name  # "mlflow http://host:5000", for the warning lines
        self.echo = echo
        self.pause = pause  # seconds of dropping calls after one failed
        self.drain = drain  # seconds `close` waits for calls still queued
        self._queue: queue.SimpleQueue[tuple[list[Item], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._missed: list[Item] = []
        self._error = ""
        self._paused_until = 0.0
        self._thread = threading.Thread(target=self._run, name=f"search {name}", daemon=True)
        self._thread.start()

    def submit(self, items: list[Item], call: Callable[[], Any]) -> None:
        """Queue ``call``, which logs ``items``; never blocks."""
        self._queue.put((items, call))

    def close(self) -> None:
        """Make the calls still queued (for at most ``drain`` seconds) and say what was missed."""
        self._queue.put(None)
        self._thread.join(self.drain)
        if self._thread.is_alive():
            while True:
                try:
                    queued = self._queue.get_nowait()
                except queue.Empty:
                    break
                if queued is not None:
                    self._missed.extend(queued[0])
            if not self._error:
                self._error = f"still busy after {self.drain:.0f} s"
        self._say_missed()

    def _run(self) -> None:
        while (queued := self._queue.get()) is not None:
            items, call = queued
            if time.monotonic() < self._paused_until:
                self._missed.extend(items)
                continue
            try:
                call()
            except Exception as error:  # whatever it raises, the trial goes on
                if not self._missed:
                    self._error = _first_line(error)
                    self.echo(
                        f"warning: {self.name} did not answer ({self._error}); the trials go on, "
                        "and what it misses is listed once it answers again"
                    )
                self._missed.extend(items)
                self._paused_until = time.monotonic() + self.pause
            else:
                self._say_missed()

    def _say_missed(self) -> None:
        if self._missed:
            self.echo(f"warning: {self.name}: not logged ({self._error}): {describe(self._missed)}")
            self._missed = []


def describe(items: list[Item]) -> str:
    """``trial 3 (2 reports, end), trial 4 (start, 12 reports, end)``: what ``items`` logged."""
    by_trial: dict[int | None, dict[str, int]] = {}
    for item in items:
        counts = by_trial.setdefault(item.trial, {})
        counts[item.what] = counts.get(item.what, 0) + item.count
    parts = []
    for trial, counts in by_trial.items():
        what = ", ".join(
            name if count == 1 else f"{count} {name}s" for name, count in counts.items()
        )
        parts.append(f"{'the study' if trial is None else f'trial {trial}'} ({what})")
    return ", ".join(parts)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__
