"""How raw data becomes what the model sees, on the resident and the streamed path alike: token ids
and category codes kept as int64, floats and 8-bit images standardized, ``task.normalize`` either
way, several inputs each by its own kind, regression targets standardized for the loss and scored
in their own units."""

from __future__ import annotations

import pytest
import torch

from search import scoring, tasks
from search.tasks.data import DeviceData
from search.tasks.streaming import StreamingData
from search.train import evaluate_batches

CPU = torch.device("cpu")


def _both(split: tasks.Split, **kwargs) -> tuple[DeviceData, StreamingData]:
    resident = DeviceData.from_split(split, val_fraction=0.2, seed=1, device=CPU, **kwargs)
    streamed = StreamingData.from_split(
        split, val_fraction=0.2, seed=1, device=CPU, workers=0, **kwargs
    )
    return resident, streamed


def _epoch(data, batch_size: int = 16) -> list:
    return list(data.batches(batch_size, torch.Generator().manual_seed(0)))


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a.dtype == b.dtype and torch.equal(a, b)


def test_token_ids_stay_int64_and_untouched_on_both_paths() -> None:
    ids = torch.randint(0, 50, (100, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 8:] = 0  # padding is just a token
    resident, streamed = _both(tasks.Split(ids.to(torch.int32), torch.arange(100) % 3))
    assert resident.train_x.dtype == torch.int64
    assert set(resident.train_x.unique().tolist()) <= set(ids.unique().tolist())
    for (a, ay), (b, by) in zip(_epoch(resident), _epoch(streamed), strict=True):
        assert a.dtype == torch.int64 and _same(a, b) and _same(ay, by)
    (x, y), (x2, y2) = resident.examples(2), streamed.examples(2)
    assert x.dtype == torch.int64 and _same(x, x2) and _same(y, y2)


def test_task_normalize_overrides_the_rule_either_way() -> None:
    images = torch.randint(0, 256, (60, 1, 4, 4), dtype=torch.uint8)
    raw, _ = _both(tasks.Split(images, torch.arange(60) % 2), normalize=False)
    assert raw.train_x.dtype == torch.int64  # as the data holds them: 8-bit integers
    counts = torch.randint(0, 1000, (60, 3))
    standardized, streamed = _both(tasks.Split(counts, torch.arange(60) % 2), normalize=True)
    assert standardized.train_x.dtype == torch.float32
    assert standardized.train_x.mean(0).abs().max() < 1e-4
    assert _same(standardized.examples(5)[0], streamed.examples(5)[0])


def test_several_inputs_each_prepared_by_its_own_kind() -> None:
    generator = torch.Generator().manual_seed(0)
    numbers = torch.randn(80, 3, generator=generator) * 100 + 5
    codes = torch.randint(0, 4, (80, 2), generator=generator)
    resident, streamed = _both(tasks.Split((numbers, codes), torch.arange(80) % 2))
    number_x, code_x = resident.train_x
    assert number_x.dtype == torch.float32 and number_x.mean(0).abs().max() < 1e-4
    assert code_x.dtype == torch.int64 and code_x.max() <= 3
    for (a, _), (b, _) in zip(_epoch(resident), _epoch(streamed), strict=True):
        assert isinstance(a, tuple) and len(a) == 2 and _same(a, b)
    for (a, _), (b, _) in zip(resident.val_batches(7), streamed.val_batches(7), strict=True):
        assert _same(a, b)


def test_regression_targets_are_standardized_for_the_loss_and_scored_in_their_units() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=generator)
    y = torch.randn(200, 2, generator=generator) * torch.tensor([100.0, 0.1]) + 1000
    resident, streamed = _both(tasks.Split(x, y), regression=True)
    assert resident.train_y.mean(0).abs().max() < 1e-3  # what the loss sees
    assert (resident.train_y.std(0) - 1).abs().max() < 1e-2
    assert resident.val_y.mean() > 400  # what the metric sees: the targets' own units
    for (_, a), (_, b) in zip(_epoch(resident), _epoch(streamed), strict=True):
        assert _same(a, b)

    class Mean(torch.nn.Module):
        """Predicts the training mean: 0 in standardized units."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(x), 2)

    rmse = scoring.Scoring("regression", "mse", "rmse", "minimize", 2)
    for data in (resident, streamed):
        value = evaluate_batches(Mean(), data.val_batches(16), rmse, targets=data.targets)
        mean = resident.targets.mean.flatten()
        expected = (data_val_y(data) - mean).square().mean().sqrt()
        assert value == pytest.approx(float(expected), rel=1e-5)
        assert value > 10  # far from the RMSE of standardized units: it is in the targets'


def data_val_y(data) -> torch.Tensor:
    return torch.cat([y for _, y in data.val_batches(64)])
