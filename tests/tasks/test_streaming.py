"""Streaming from the host against device-resident data: the same batches, the same training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search import references, tasks
from search.contract import Hyperparameters
from search.tasks import placement
from search.tasks.data import DeviceData
from search.tasks.streaming import StreamingData
from search.train import fit
from tasks.formats import digits

CPU = torch.device("cpu")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "digits-folder"


def _both(split, **kwargs):
    resident = DeviceData.from_split(split, val_fraction=0.25, seed=3, device=CPU, **kwargs)
    streamed = StreamingData.from_split(
        split, val_fraction=0.25, seed=3, device=CPU, workers=1, **kwargs
    )
    return resident, streamed


def _epoch(data, batch_size: int, seed: int):
    return list(data.batches(batch_size, torch.Generator().manual_seed(seed), data.augment))


@pytest.mark.parametrize("augment", [False, True])
def test_both_paths_give_the_same_batches_and_validation(augment: bool) -> None:
    images, labels = digits(300, colour=augment)
    resident, streamed = _both(tasks.Split(images, labels), augment=augment)
    assert streamed.n_train == resident.n_train == 225
    (mine,), (theirs,) = resident.inputs.parts, streamed.inputs.parts
    assert torch.equal(mine.mean, theirs.mean) and torch.equal(mine.std, theirs.std)
    for (a, ay), (b, by) in zip(_epoch(resident, 32, 7), _epoch(streamed, 32, 7), strict=True):
        assert torch.equal(a, b) and torch.equal(ay, by)
    for (a, ay), (b, by) in zip(resident.val_batches(50), streamed.val_batches(50), strict=True):
        assert torch.equal(a, b) and torch.equal(ay, by)
    (a, ay), (b, by) = resident.examples(2), streamed.examples(2)
    assert torch.equal(a, b) and torch.equal(ay, by)


def test_both_paths_train_a_model_with_dropout_to_the_same_accuracy() -> None:
    build = references.load("models.py:build", EXAMPLES)  # the example's CNN, with dropout

    split = tasks.get("digits").load(None, False, True)
    hp = Hyperparameters(lr=3e-3, batch_size=64, optimizer="adam")
    histories = []
    for data in _both(split):
        torch.manual_seed(0)
        model = build(input_shape=(1, 8, 8), num_classes=10, depth=2, width=16, dropout=0.3)
        histories.append(fit(model, data, hp, epochs=3, seed=5))
    resident, streamed = histories
    assert [r.value for r in resident] == [r.value for r in streamed]
    assert [r.train_loss for r in resident] == [r.train_loss for r in streamed]
    assert resident[-1].value > 0.8


def test_a_validation_split_of_the_datas_own_and_training_on_it_too() -> None:
    images, labels = digits(200)
    train, val = tasks.Split(images[:150], labels[:150]), tasks.Split(images[150:], labels[150:])
    resident, streamed = _both(train, val=val)
    assert resident.n_train == streamed.n_train == 150
    assert sum(len(y) for _, y in streamed.val_batches(64)) == 50
    for (a, _), (b, _) in zip(resident.val_batches(64), streamed.val_batches(64), strict=True):
        assert torch.equal(a, b)
    assert streamed.with_validation_in_training().n_train == 200
    both = _epoch(resident.with_validation_in_training(), 40, 1)
    assert [
        torch.equal(a, b)
        for (a, _), (b, _) in zip(both, _epoch(streamed.with_validation_in_training(), 40, 1))
    ] == [True] * 5


def test_features_and_sequences_normalize_per_channel() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 5, generator=generator) * torch.tensor([1.0, 10, 100, 0.1, 3]) + 7
    labels = torch.arange(400) % 4
    resident, streamed = _both(tasks.Split(features, labels))
    assert resident.train_x.shape == (300, 5)
    assert resident.train_x.mean(0).abs().max() < 1e-4
    assert (resident.train_x.std(0) - 1).abs().max() < 1e-3  # each feature on its own scale
    assert torch.equal(resident.examples(3)[0], streamed.examples(3)[0])


def test_the_memory_rule_keeps_small_data_resident_and_streams_the_rest() -> None:
    free = placement.free_memory(CPU)
    assert free > 0
    assert placement.choose(1_000, CPU) == "resident"
    assert placement.choose(int(free * 0.6), CPU) == "stream"
    assert placement.choose(int(free * 0.3), CPU, processes=2) == "stream"  # each worker a copy
