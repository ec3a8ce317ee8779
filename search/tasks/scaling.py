"""How raw data becomes what the model trains on, with statistics of the training part only.

Inputs, each of them where the data has several: float inputs and 8-bit images are standardized per
channel (dimension 1: an image's colour channels, a table's features, a sequence's positions) to
float32; other integer inputs (token ids, category codes) reach the model as int64, never
normalized or cast to floats. ``task.normalize = true`` standardizes every input, ``false`` none
(floats stay float32, integers int64). Regression targets are standardized per channel the same way
for the loss, and the model's outputs are mapped back to the targets' own units wherever a metric
is computed or a model exported.

Statistics are summed in float64 a chunk at a time, so that data streamed from the host (even from
a memory-mapped file) gets exactly the resident path's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from search.contract import Inputs, layout_for

STATISTICS_CHUNK = 4096  # examples per step when summing statistics


def is_integer(x: torch.Tensor) -> bool:
    return not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool


def standardized_by_default(x: torch.Tensor) -> bool:
    """Floats and 8-bit images are standardized; other integers are ids or codes, kept."""
    return x.is_floating_point() or x.dtype == torch.uint8


@dataclass(frozen=True)
class Scale:
    """One input's preparation: standardized with ``mean``/``std`` (shaped to broadcast over a
    batch), or, where they are None, passed as ``dtype``."""

    mean: torch.Tensor | None
    std: torch.Tensor | None
    dtype: torch.dtype

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x.to(dtype=self.dtype)
        x = (x.to(dtype=torch.float32) - self.mean) / self.std
        return x.contiguous(memory_format=layout_for(x.device, x.dim()))

    def to(self, device: torch.device) -> Scale:
        if self.mean is None:
            return self
        return Scale(self.mean.to(device), self.std.to(device), self.dtype)


@dataclass(frozen=True)
class InputScale:
    """Every input's `Scale`, in the order of the model's arguments."""

    parts: tuple[Scale, ...]

    @classmethod
    def of(
        cls, inputs: Inputs, normalize: bool | None, index: torch.Tensor | None = None
    ) -> InputScale:
        """Statistics of the rows ``index`` (all rows by default) of the training ``inputs``."""
        parts = []
        for x in inputs if isinstance(inputs, tuple) else (inputs,):
            standardize = standardized_by_default(x) if normalize is None else normalize
            if standardize:
                parts.append(Scale(*channel_statistics(x, index), torch.float32))
            else:
                parts.append(Scale(None, None, torch.int64 if is_integer(x) else torch.float32))
        return cls(tuple(parts))

    @property
    def several(self) -> bool:
        return len(self.parts) > 1

    def apply(self, inputs: Inputs) -> Inputs:
        """Raw inputs (on the statistics' device) as the model takes them."""
        if isinstance(inputs, tuple):
            return tuple(part.apply(x) for part, x in zip(self.parts, inputs, strict=True))
        return self.parts[0].apply(inputs)

    def to(self, device: torch.device) -> InputScale:
        return InputScale(tuple(part.to(device) for part in self.parts))


@dataclass(frozen=True)
class TargetScale:
    """Regression targets' per-channel training statistics: targets are standardized for the
    loss, and outputs mapped back to the targets' units with `restore`."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, targets: torch.Tensor, index: torch.Tensor | None = None) -> TargetScale:
        return cls(*channel_statistics(targets, index))

    def standardize(self, y: torch.Tensor) -> torch.Tensor:
        return (y.to(dtype=torch.float32) - self.mean) / self.std

    def restore(self, output: torch.Tensor) -> torch.Tensor:
        return output * self.std + self.mean

    def to(self, device: torch.device) -> TargetScale:
        return TargetScale(self.mean.to(device), self.std.to(device))


def channel_statistics(
    values: torch.Tensor, index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (dimension 1) mean and standard deviation of ``values`` (the rows ``index``,
    if given), shaped to broadcast over a batch."""
    rows = len(values) if index is None else len(index)
    dims = [0, *range(2, values.dim())]
    total = torch.zeros(values.shape[1], dtype=torch.float64, device=values.device)
    squares = torch.zeros_like(total)
    for start in range(0, rows, STATISTICS_CHUNK):
        chunk = (
            values[start : start + STATISTICS_CHUNK]
            if index is None
            else values[index[start : start + STATISTICS_CHUNK]]
        )
        chunk = chunk.to(torch.float64)
        total += chunk.sum(dim=dims)
        squares += chunk.square().sum(dim=dims)
    count = rows * values[0, 0].numel()
    mean = total / count
    variance = (squares - count * mean.square()) / max(1, count - 1)
    shape = (1, -1, *[1] * (values.dim() - 2))
    std = variance.clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float().reshape(shape), std.float().reshape(shape)


def for_loss(y: torch.Tensor, targets: TargetScale | None) -> torch.Tensor:
    """Training targets as the loss takes them: regression targets standardized, the rest as
    metrics take them."""
    return targets.standardize(y) if targets is not None else for_metric(y)


def for_metric(y: torch.Tensor) -> torch.Tensor:
    """Targets as metrics take them: integers as int64 (class indices), floats as float32."""
    return y.to(torch.float32) if y.is_floating_point() else y.to(torch.int64)
