"""Device-resident data: the whole split lives on the device, prepared once.

Batches are index slices of a seeded permutation drawn on the device, and augmentation (random crop
with 4-pixel padding and horizontal flip, as for CIFAR) runs there too: no DataLoader, no PIL and no
host round trip inside the training step. Data too large for the device streams from the host
instead (`search.tasks.streaming`), in the same order and with the same preparation.

Inputs have any shape N×C×...: images N×C×H×W, sequences N×C×L (or N×L of token ids), features N×F
(each feature its own channel), or several such inputs. How each is prepared (standardized, or
kept as integers) is `search.tasks.scaling`'s rule, with statistics of the training part.
Training targets are as the loss takes them (regression targets standardized); validation
targets stay in their own units, which the metric is computed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from search.contract import Inputs, first_input, layout_for, map_inputs, rows_of
from search.tasks.registry import Split
from search.tasks.scaling import InputScale, TargetScale, for_loss, for_metric


@dataclass(frozen=True)
class DeviceData:
    """Training and validation data on one device, prepared with training statistics."""

    train_x: Inputs
    train_y: torch.Tensor
    val_x: Inputs
    val_y: torch.Tensor
    inputs: InputScale  # how raw inputs of any split are prepared for the model
    targets: TargetScale | None = None  # regression targets' statistics
    augment: bool = False  # the task's default

    mode = "resident"  # what a trial records of the path its data took

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
    ) -> DeviceData:
        """Carve a seeded validation split out of ``split`` (unless ``val`` is given) and move
        both parts to ``device``."""
        if val is None:
            train_idx, val_idx = carve(len(split), val_fraction, seed)
            split, val = split.take(train_idx), split.take(val_idx)
        train_x = map_inputs(lambda x: x.to(device=device), split.inputs)
        inputs = InputScale.of(train_x, normalize)
        train_y = split.targets.to(device=device)
        targets = TargetScale.of(train_y) if regression else None
        return cls(
            train_x=inputs.apply(train_x),
            train_y=for_loss(train_y, targets),
            val_x=inputs.apply(map_inputs(lambda x: x.to(device=device), val.inputs)),
            val_y=for_metric(val.targets.to(device=device)),
            inputs=inputs,
            targets=targets,
            augment=augment,
        )

    def with_validation_in_training(self) -> DeviceData:
        """The same data with the validation part added to training (to retrain a final model);
        preparation keeps the training statistics, so the model sees the same scale."""
        val_y = self.val_y if self.targets is None else self.targets.standardize(self.val_y)
        return dataclasses.replace(
            self,
            train_x=_cat(self.train_x, self.val_x),
            train_y=torch.cat([self.train_y, val_y]),
        )

    def split_batches(self, split: Split, batch_size: int) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """Another split (the test set) in order, prepared as the training part was."""
        x = self.inputs.apply(map_inputs(lambda part: part.to(device=self.device), split.inputs))
        y = for_metric(split.targets.to(device=self.device))
        for start in range(0, len(y), batch_size):
            yield rows_of(x, slice(start, start + batch_size)), y[start : start + batch_size]

    def examples(self, n: int) -> tuple[Inputs, torch.Tensor]:
        """The first ``n`` training examples as the model and the loss see them, on the CPU."""
        return map_inputs(lambda x: x[:n].cpu(), self.train_x), self.train_y[:n].cpu()

    @property
    def device(self) -> torch.device:
        return first_input(self.train_x).device

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    def batches(
        self, batch_size: int, generator: torch.Generator, augment: bool = False
    ) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """One epoch of full batches in a seeded order; the last partial batch is dropped."""
        order = torch.randperm(self.n_train, device=self.device, generator=generator)
        for start in range(0, self.n_train - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            x = rows_of(self.train_x, idx)
            if augment:
                x = crop_flip(x, generator)
            yield x, self.train_y[idx]

    def val_batches(self, batch_size: int) -> Iterator[tuple[Inputs, torch.Tensor]]:
        for start in range(0, len(self.val_y), batch_size):
            yield (
                rows_of(self.val_x, slice(start, start + batch_size)),
                self.val_y[start : start + batch_size],
            )


def _cat(a: Inputs, b: Inputs) -> Inputs:
    if isinstance(a, tuple):
        return tuple(torch.cat([x, y]) for x, y in zip(a, b, strict=True))
    return torch.cat([a, b])


def carve(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation indices of ``n`` examples: a seeded share held out."""
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise ValueError(f"{n} examples leave none for training with val_fraction={val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def can_augment(x: Inputs) -> bool:
    """Crop and flip need one input of images, N×C×H×W floats."""
    return not isinstance(x, tuple) and x.dim() == 4 and x.is_floating_point()


def crop_flip(x: Inputs, generator: torch.Generator, pad: int = 4) -> Inputs:
    """Random ``pad``-pixel translation (zero padding) and horizontal flip, per image, batched."""
    if not can_augment(x):
        raise ValueError("augmentation needs one input of N×C×H×W float images")
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols].contiguous(memory_format=layout_for(x.device))
