"""Device-resident data: the whole split lives on the device as one normalized tensor.

Batches are index slices of a seeded permutation drawn on the device, and augmentation (random crop
with 4-pixel padding and horizontal flip, as for CIFAR) runs there too: no DataLoader, no PIL and no
host round trip inside the training step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from search.tasks.registry import Split


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

    @classmethod
    def from_split(
        cls,
        split: Split,
        *,
        val_fraction: float,
        seed: int,
        device: torch.device,
        augment: bool = False,
    ) -> DeviceData:
        """Carve a seeded validation split out of ``split`` and move both parts to ``device``."""
        n = len(split.labels)
        n_val = max(1, round(n * val_fraction))
        if n - n_val < 1:
            raise ValueError(
                f"{n} examples leave none for training with val_fraction={val_fraction}"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = order[:n_val], order[n_val:]
        images = split.images.to(device=device, dtype=torch.float32)
        train_x = images[train_idx]
        # Per-channel statistics of the training part only, so validation stays unseen.
        mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return ((x - mean) / std).contiguous(memory_format=layout_for(device))

        labels = split.labels.to(device=device, dtype=torch.int64)
        return cls(
            train_x=prepare(train_x),
            train_y=labels[train_idx],
            val_x=prepare(images[val_idx]),
            val_y=labels[val_idx],
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

    def prepare(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """Another split (the test set) on this device, normalized as the training part was."""
        images = split.images.to(device=self.device, dtype=torch.float32)
        x = ((images - self.mean) / self.std).contiguous(memory_format=layout_for(self.device))
        return x, split.labels.to(device=self.device, dtype=torch.int64)

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


def layout_for(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA, where convolutions run faster in it (and with bf16); plain elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format
