"""Data streamed from host memory (or a memory-mapped cache file) for data too large for the device.

The training split stays on the host at its own scale (uint8 images stay uint8, a quarter of the
float32 the device-resident path keeps). Each epoch draws the same seeded permutation on the device
that `search.tasks.data.DeviceData` draws, so both paths see the same batches in the same order; a
`DataLoader` with worker processes gathers each batch's rows on the host (whole batches at once,
through ``__getitems__``), pinned when the device is a GPU, and the copy to the device does not
block. Preparation (`search.tasks.scaling`) and augmentation then run on the device, as on the
resident path, with the same statistics. On the CPU, with the same seed, the two paths train to the
same weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from search.contract import Inputs, map_inputs, rows_of
from search.tasks.data import carve, crop_flip
from search.tasks.registry import Split
from search.tasks.scaling import InputScale, TargetScale, for_loss, for_metric


def loader_workers() -> int:
    """Worker processes that gather batches: half the cores, at most 4 (they only copy rows)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class _Rows(Dataset):
    """Rows ``index`` of host tensors; fetched a whole batch at a time."""

    def __init__(self, inputs: Inputs, targets: torch.Tensor, index: torch.Tensor) -> None:
        self.inputs, self.targets, self.index = inputs, targets, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> tuple[Inputs, torch.Tensor]:
        row = self.index[position]
        return rows_of(self.inputs, row), self.targets[row]

    def __getitems__(self, positions: list[int]) -> tuple[Inputs, torch.Tensor]:
        rows = self.index[torch.as_tensor(positions)]
        return rows_of(self.inputs, rows), self.targets[rows]

    def gathered(self) -> tuple[Inputs, torch.Tensor]:
        """Every row, in order, as new tensors."""
        return self.__getitems__(list(range(len(self))))


def _whole_batch(batch: Any) -> Any:
    return batch  # `_Rows.__getitems__` already returns one batch; nothing to collate


class _EpochOrder:
    """A batch sampler whose order is set at the start of each epoch (from the device's seeded
    permutation), so that persistent loader workers serve every epoch."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.order: list[int] = []

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.order) - self.batch_size + 1, self.batch_size):
            yield self.order[start : start + self.batch_size]

    def __len__(self) -> int:
        return len(self.order) // self.batch_size


class StreamingData:
    """Training and validation rows on the host, prepared on the device batch by batch."""

    mode = "stream"

    def __init__(
        self,
        train: _Rows,
        val: _Rows,
        inputs: InputScale,
        targets: TargetScale | None,
        device: torch.device,
        augment: bool = False,
        workers: int | None = None,
    ) -> None:
        self.train, self.val = train, val
        self.inputs = inputs.to(device)
        self.targets = None if targets is None else targets.to(device)
        self._device = device
        self.augment = augment
        self.workers = loader_workers() if workers is None else workers
        self._loader: DataLoader | None = None
        self._sampler: _EpochOrder | None = None

    @classmethod
    def from_split(
        cls,
        split: Split,
        *,
        val_fraction: float,
        seed: int,
        device: torch.device,
        augment: bool = False,
        val: Split | None = None,
        normalize: bool | None = None,
        regression: bool = False,
        workers: int | None = None,
    ) -> StreamingData:
        """As `DeviceData.from_split`: the same validation split, the same statistics."""
        if val is None:
            train_idx, val_idx = carve(len(split), val_fraction, seed)
            train = _Rows(split.inputs, split.targets, train_idx)
            held = _Rows(split.inputs, split.targets, val_idx)
        else:
            train = _Rows(split.inputs, split.targets, torch.arange(len(split)))
            held = _Rows(val.inputs, val.targets, torch.arange(len(val)))
        inputs = InputScale.of(train.inputs, normalize, train.index)
        targets = TargetScale.of(train.targets, train.index) if regression else None
        return cls(train, held, inputs, targets, device, augment, workers)

    def examples(self, n: int) -> tuple[Inputs, torch.Tensor]:
        """The first ``n`` training examples as the model and the loss see them, on the CPU."""
        rows = self.train.index[:n]
        x = map_inputs(lambda part: part.cpu(), self._to_device(rows_of(self.train.inputs, rows)))
        y = for_loss(self.train.targets[rows].to(self.device), self.targets)
        return x, y.cpu()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def n_train(self) -> int:
        return len(self.train)

    def batches(
        self, batch_size: int, generator: torch.Generator, augment: bool = False
    ) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """One epoch of full batches in the resident path's seeded order."""
        order = torch.randperm(self.n_train, device=self.device, generator=generator)
        loader = self._train_loader(batch_size)
        self._sampler.order = order.cpu().tolist()
        for x, y in loader:
            x = self._to_device(x)
            if augment:
                x = crop_flip(x, generator)
            yield x, for_loss(y.to(self.device, non_blocking=True), self.targets)

    def val_batches(self, batch_size: int) -> Iterator[tuple[Inputs, torch.Tensor]]:
        yield from self._in_order(self.val, batch_size)

    def split_batches(self, split: Split, batch_size: int) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """Another split (the test set) in order, prepared as the training part was."""
        yield from self._in_order(
            _Rows(split.inputs, split.targets, torch.arange(len(split))), batch_size
        )

    def with_validation_in_training(self) -> StreamingData:
        """The validation rows added to training (to retrain a final model), same statistics."""
        if self.train.inputs is self.val.inputs:
            train = _Rows(
                self.train.inputs, self.train.targets, torch.cat([self.train.index, self.val.index])
            )
        else:  # separate tensors: gathered into one on the host
            (train_x, train_y), (val_x, val_y) = self.train.gathered(), self.val.gathered()
            joined = (
                tuple(torch.cat([a, b]) for a, b in zip(train_x, val_x, strict=True))
                if isinstance(train_x, tuple)
                else torch.cat([train_x, val_x])
            )
            train = _Rows(
                joined, torch.cat([train_y, val_y]), torch.arange(len(train_y) + len(val_y))
            )
        return StreamingData(
            train, self.val, self.inputs, self.targets, self.device, self.augment, self.workers
        )

    def _train_loader(self, batch_size: int) -> DataLoader:
        if self._loader is None or self._sampler.batch_size != batch_size:
            self._sampler = _EpochOrder(batch_size)
            self._loader = DataLoader(
                self.train,
                batch_sampler=self._sampler,
                collate_fn=_whole_batch,
                num_workers=self.workers,
                persistent_workers=self.workers > 0,
                pin_memory=self.device.type == "cuda",
                # Its own generator: a DataLoader otherwise draws its workers' seeds from the
                # global RNG, which the model's dropout also draws from.
                generator=torch.Generator(),
            )
        return self._loader

    def _in_order(self, rows: _Rows, batch_size: int) -> Iterator[tuple[Inputs, torch.Tensor]]:
        for start in range(0, len(rows), batch_size):
            x, y = rows.__getitems__(list(range(start, min(start + batch_size, len(rows)))))
            if self.device.type == "cuda":
                x, y = map_inputs(lambda part: part.pin_memory(), x), y.pin_memory()
            yield self._to_device(x), for_metric(y.to(self.device, non_blocking=True))

    def _to_device(self, x: Inputs) -> Inputs:
        return self.inputs.apply(
            map_inputs(lambda part: part.to(self.device, non_blocking=True), x)
        )
