"""One training step, run eagerly or replayed from a capture.

At small batches a GPU trains faster than Python can launch its kernels: a step of a small CNN is
a few hundred launches of microseconds each. A captured step records them once per trial in a
CUDA graph (`torch.cuda.graph`) and then replays the whole step (forward, backward, clipping and
the optimizer's update) as one launch per batch. What a capture needs, the trial's step provides:
batches of one shape (the last partial batch is dropped), an optimizer that reads its learning
rate from a device tensor (fused or capturable: `search.train.make_optimizer`) which the
schedule sets in place between replays, and no reads back to the host inside the step.

Where there is no CUDA graph (the CPU), ``captured`` compiles the same step with `torch.compile`
instead: the same training, a way to test the step's capture semantics on any machine, though
compiling costs more than a short trial saves. A step that cannot be captured (a model that
reads a value back to the host, changes shape or runs host code per batch) runs eagerly: the
first failure's reason is kept, and the trial records it.

The first `WARMUP_STEPS` batches train eagerly, on a side stream on CUDA, as `torch.cuda.graph`
asks: they create the optimizer's state and let cuDNN and cuBLAS pick their kernels. They are
real steps, so a captured trial trains on the same batches in the same order as an eager one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from search.contract import Inputs, first_input

STEP_MODES = ("auto", "eager", "captured")
WARMUP_STEPS = 3

Body = Callable[[Inputs, torch.Tensor], torch.Tensor]


def resolve_mode(mode: str, device: torch.device) -> str:
    """``auto``: captured on CUDA, where launches bound small steps; eager on the CPU, where
    compiling costs more than the trials of a study save."""
    if mode not in STEP_MODES:
        raise ValueError(f"unknown step mode {mode!r}; known: {', '.join(STEP_MODES)}")
    if mode == "auto":
        return "captured" if device.type == "cuda" else "eager"
    return mode


@dataclass
class StepReport:
    """How a trial's steps ran (`Step.ran`), and why not as asked (`Step.fallback`)."""

    ran: str = "eager"
    fallback: str | None = None


class Step:
    """``step(x, y)`` trains on one batch through ``body`` and returns the batch's loss (a
    scalar on the device, valid until the next call).

    ``mode`` is what was asked (``eager`` or ``captured``); ``ran`` what runs now (``eager``,
    ``graph`` or ``compiled``); ``fallback`` why a captured step runs eagerly, if it does.
    """

    def __init__(self, body: Body, device: torch.device, mode: str = "eager") -> None:
        self.body = body
        self.device = device
        self.mode = mode
        self.fallback: str | None = None
        self.steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[Inputs, torch.Tensor, torch.Tensor] | None = None
        self._compiled: Body | None = None
        if mode == "captured" and device.type != "cuda":
            # Each trial's step closes over its own model and optimizer, which the compiler
            # guards on: without a reset, the ninth trial would hit its recompile limit.
            torch._dynamo.reset()
            self._compiled = torch.compile(body, dynamic=False)

    @property
    def ran(self) -> str:
        if self.mode == "eager" or self.fallback is not None:
            return "eager"
        return "graph" if self.device.type == "cuda" else "compiled"

    def __call__(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        if self.mode == "eager":
            return self.body(x, y)
        if self.fallback is not None:
            return self._uncaptured(x, y)
        if self._compiled is not None:
            return self._compiled_step(x, y)
        if self._graph is not None:
            return self._replay(x, y)
        if self.steps <= WARMUP_STEPS:
            return self._side_stream(x, y)
        return self._capture(x, y)

    def give_up(self, reason: str) -> None:
        """Run eagerly from now on, for ``reason`` (the first one is kept)."""
        self.fallback = self.fallback or reason
        self._graph = self._static = self._compiled = None

    def _compiled_step(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        assert self._compiled is not None
        try:
            return self._compiled(x, y)
        except Exception as error:  # the compiler's errors have no common base class
            self.give_up(f"torch.compile: {_one_line(error)}")
            return self._uncaptured(x, y)

    def _side_stream(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            loss = self._uncaptured(x, y)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return loss

    def _uncaptured(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        """The body run eagerly by a step meant for capture: its optimizer's capturable form
        warns, once per optimizer, that it runs uncaptured; that is expected here."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "This instance was constructed with capturable")
            return self.body(x, y)

    def _capture(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        """Record the step on this batch, then replay it: the batch trains once, in the graph."""
        static_x = _clone(x)
        static_y = y.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_loss = self.body(static_x, static_y)
        except Exception as error:  # a host read, a shape that changes, an op CUDA cannot record
            self.give_up(f"CUDA graph capture: {_one_line(error)}")
            torch.cuda.synchronize(self.device)
            return self._uncaptured(x, y)
        self._graph, self._static = graph, (static_x, static_y, static_loss)
        graph.replay()
        return static_loss

    def _replay(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        assert self._graph is not None and self._static is not None
        static_x, static_y, static_loss = self._static
        if not _same_shapes(x, static_x) or y.shape != static_y.shape:
            return self._uncaptured(x, y)  # not with full batches; trained eagerly if it comes
        _copy(static_x, x)
        static_y.copy_(y)
        self._graph.replay()
        return static_loss


def _clone(x: Inputs) -> Inputs:
    return tuple(t.clone() for t in x) if isinstance(x, tuple) else x.clone()


def _copy(into: Inputs, x: Inputs) -> None:
    if isinstance(into, tuple):
        for a, b in zip(into, x, strict=True):  # type: ignore[arg-type]
            a.copy_(b)
    else:
        into.copy_(x)  # type: ignore[arg-type]


def _same_shapes(x: Inputs, like: Inputs) -> bool:
    if isinstance(x, tuple) != isinstance(like, tuple):
        return False
    if isinstance(x, tuple):
        return all(a.shape == b.shape for a, b in zip(x, like, strict=False))  # type: ignore[arg-type]
    return first_input(x).shape == first_input(like).shape


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
