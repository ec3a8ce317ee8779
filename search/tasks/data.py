"""Device-resident data: the whole split lives on the device as one normalized tensor.

Batches are index slices of a seeded permutation drawn on the device, and augmentation (random crop
with 4-pixel padding and horizontal flip, as for CIFAR) runs there too: no DataLoader, no PIL and no
host round trip inside the training step. Data too large for the device streams from the host
instead (`search.tasks.streaming`), in the same order and with the same normalization.

Inputs have any shape N×C×...: images N×C×H×W, sequences N×C×L, features N×F (each feature its
own channel). Normalization is per channel (dimension 1), with statistics of the training part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from search.tasks.registry import Split

STATISTICS_CHUNK = 4096  # examples per step when summing the training statistics


@dataclass(frozen=True)
class DeviceData:
    """Training and validation tensors on one device, normalized with training statistics."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    mean: torch.Tensor  # per-channel statistics of the training part, to prepare other splits
    std: torch.Tensor
    augment: bool = False

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
    ) -> DeviceData:
        """Carve a seeded validation split out of ``split`` (unless ``val`` is given) and move
        both parts to ``device``."""
        if val is None:
            train_idx, val_idx = carve(len(split.labels), val_fraction, seed)
            split, val = take(split, train_idx), take(split, val_idx)
        train_x = split.images.to(device=device)
        mean, std = channel_statistics(train_x)
        return cls(
            train_x=normalize(train_x, mean, std),
            train_y=split.labels.to(device=device, dtype=torch.int64),
            val_x=normalize(val.images.to(device=device), mean, std),
            val_y=val.labels.to(device=device, dtype=torch.int64),
            mean=mean,
            std=std,
            augment=augment,
        )

    def with_validation_in_training(self) -> DeviceData:
        """The same data with the validation part added to training (to retrain a final model);
        normalization keeps the training statistics, so the model sees the same scale."""
        return dataclasses.replace(
            self,
            train_x=torch.cat([self.train_x, self.val_x]),
            train_y=torch.cat([self.train_y, self.val_y]),
        )

    def split_batches(
        self, split: Split, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Another split (the test set) in order, normalized as the training part was."""
        x = normalize(split.images.to(device=self.device), self.mean, self.std)
        y = split.labels.to(device=self.device, dtype=torch.int64)
        for start in range(0, len(y), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]

    def examples(self, n: int) -> torch.Tensor:
        """The first ``n`` training inputs as the model sees them, on the CPU."""
        return self.train_x[:n].cpu()

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    def batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of full batches in a seeded order; the last partial batch is dropped."""
        order = torch.randperm(self.n_train, device=self.device, generator=generator)
        for start in range(0, self.n_train - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            x = self.train_x[idx]
            if self.augment:
                x = crop_flip(x, generator)
            yield x, self.train_y[idx]

    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.val_y), batch_size):
            yield self.val_x[start : start + batch_size], self.val_y[start : start + batch_size]


def take(split: Split, index: torch.Tensor) -> Split:
    """The examples ``index`` of a split."""
    return Split(split.images[index], split.labels[index])


def carve(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation indices of ``n`` examples: a seeded share held out."""
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise ValueError(f"{n} examples leave none for training with val_fraction={val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def channel_statistics(
    images: torch.Tensor, index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of ``images`` (the rows ``index``, if given),
    shaped to broadcast over a batch, summed in float64 a chunk at a time, so that data streamed
    from the host (even from a memory-mapped file) gets exactly the resident path's statistics."""
    rows = len(images) if index is None else len(index)
    dims = [0, *range(2, images.dim())]
    total = torch.zeros(images.shape[1], dtype=torch.float64, device=images.device)
    squares = torch.zeros_like(total)
    for start in range(0, rows, STATISTICS_CHUNK):
        chunk = (
            images[start : start + STATISTICS_CHUNK]
            if index is None
            else images[index[start : start + STATISTICS_CHUNK]]
        )
        chunk = chunk.to(torch.float64)
        total += chunk.sum(dim=dims)
        squares += chunk.square().sum(dim=dims)
    count = rows * images[0, 0].numel()
    mean = total / count
    variance = (squares - count * mean.square()) / max(1, count - 1)
    shape = (1, -1, *[1] * (images.dim() - 2))
    std = variance.clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float().reshape(shape), std.float().reshape(shape)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw inputs as the model trains on them: float32, per-channel standardized, in the device's
    preferred layout."""
    x = (x.to(dtype=torch.float32) - mean) / std
    return x.contiguous(memory_format=layout_for(x.device, x.dim()))


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel translation (zero padding) and horizontal flip, per image, batched."""
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


def layout_for(device: torch.device, dims: int = 4) -> torch.memory_format:
    """channels_last for images on CUDA, where convolutions run faster in it (and with bf16);
    plain elsewhere."""
    return torch.channels_last if device.type == "cuda" and dims == 4 else torch.contiguous_format
