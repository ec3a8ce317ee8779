from __future__ import annotations

import itertools

import pytest
import torch

from search import tasks
from search.checkpoint import FileCheckpoint
from search.errors import Diverged, SettingsError
from search.step import StepReport
from search.tasks import Split, models
from search.tasks.data import DeviceData, crop_flip
from search.train import (
    EpochResult,
    Hyperparameters,
    eval_batch_size,
    evaluate,
    fit,
    make_optimizer,
    pick_device,
    restore_optimizer,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DeviceData:
    split = tasks.get("digits").load(None, False, True)
    return DeviceData.from_split(split, val_fraction=0.25, seed=0, device=CPU)


def _model(family: str = "cnn", depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(family, depth, (1, 8, 8), 10)


def test_fit_learns_digits_and_reports_every_epoch(digits: DeviceData) -> None:
    seen: list[EpochResult] = []
    history = fit(
        _model(),
        digits,
        Hyperparameters(lr=3e-3, batch_size=64),
        epochs=4,
        seed=1,
        on_epoch=seen.append,
    )
    assert seen == history
    assert [r.epoch for r in history] == [1, 2, 3, 4]
    assert history[-1].value > 0.9
    assert history[-1].train_loss < history[0].train_loss
    assert all(r.seconds > 0 and r.images_per_second > 0 for r in history)


@pytest.mark.parametrize("batch_size", [64, 512])
def test_reports_inside_epochs_leave_training_as_it_was(
    digits: DeviceData, batch_size: int
) -> None:
    """Evaluating draws no random numbers: each epoch ends the same however often it is
    reported. An epoch of fewer steps than reports (512: two) reports one evaluation twice."""
    hp = Hyperparameters(batch_size=batch_size)
    once, thrice = (
        fit(_model(), digits, hp, epochs=2, seed=1, reports_per_epoch=k) for k in (1, 3)
    )
    assert [r.step for r in thrice] == list(range(1, 7))
    assert [r.epoch for r in thrice] == [pytest.approx(s / 3, abs=1e-6) for s in range(1, 7)]
    assert [r.epoch for r in once] == [1, 2]
    assert [r.value for r in once] == [thrice[2].value, thrice[5].value]
    assert sum(r.seconds for r in thrice) > 0


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_each_optimizer_trains(digits: DeviceData, optimizer: str) -> None:
    lr = {"sgd": 0.05, "adam": 3e-3, "rmsprop": 1e-3}[optimizer]
    hp = Hyperparameters(lr=lr, batch_size=64, optimizer=optimizer, momentum=0.9, weight_decay=1e-4)
    history = fit(_model(), digits, hp, epochs=3, seed=1)
    assert history[-1].value > 0.8


def test_same_seed_same_history_other_seed_differs(digits: DeviceData) -> None:
    hp = Hyperparameters(lr=1e-2, batch_size=128, optimizer="sgd", momentum=0.5)
    first = [r.train_loss for r in fit(_model(), digits, hp, epochs=2, seed=7)]
    again = [r.train_loss for r in fit(_model(), digits, hp, epochs=2, seed=7)]
    other = [r.train_loss for r in fit(_model(), digits, hp, epochs=2, seed=8)]
    assert first == again
    assert first != other


def test_a_diverging_loss_stops_at_that_epoch(digits: DeviceData) -> None:
    hp = Hyperparameters(lr=1e3, batch_size=64, optimizer="sgd", momentum=0.9)
    seen: list[EpochResult] = []
    with pytest.raises(Diverged) as e:
        fit(_model("mlp"), digits, hp, epochs=10, seed=1, on_epoch=seen.append)
    assert e.value.reason == "diverged"
    assert e.value.epoch == 1
    assert seen == []


def test_on_epoch_can_stop_training(digits: DeviceData) -> None:
    class Stop(Exception):
        pass

    seen: list[int] = []

    def stop_after_two(result: EpochResult) -> None:
        seen.append(result.epoch)
        if result.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(
            _model(),
            digits,
            Hyperparameters(batch_size=64),
            epochs=10,
            seed=1,
            on_epoch=stop_after_two,
        )
    assert seen == [1, 2]


def test_batch_larger_than_the_training_set_is_refused(digits: DeviceData) -> None:
    with pytest.raises(ValueError, match="exceeds the"):
        fit(_model(), digits, Hyperparameters(batch_size=digits.n_train + 1), epochs=1, seed=1)


def test_evaluate_counts_correct_predictions(digits: DeviceData) -> None:
    class Oracle(torch.nn.Module):
        def __init__(self, labels: torch.Tensor) -> None:
            super().__init__()
            self.labels = labels
            self.seen = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.labels[self.seen : self.seen + len(x)]
            self.seen += len(x)
            return torch.nn.functional.one_hot(y, 10).float()

    y = digits.val_y.clone()
    y[:10] = (y[:10] + 1) % 10  # ten wrong answers
    assert evaluate(Oracle(y), digits.val_x, digits.val_y, batch_size=100) == pytest.approx(
        1 - 10 / len(y)
    )


def test_accuracy_does_not_depend_on_the_evaluation_batch(digits: DeviceData) -> None:
    # The CPU evaluates in batches smaller than the split; the accuracy is the whole split's.
    assert eval_batch_size(CPU) < len(digits.val_y)
    model = _model()
    (report,) = fit(model, digits, Hyperparameters(lr=3e-3, batch_size=64), epochs=1, seed=1)
    whole = evaluate(model, digits.val_x, digits.val_y, batch_size=len(digits.val_y))
    assert 0.5 < whole < 1.0
    assert report.value == whole
    assert evaluate(model, digits.val_x, digits.val_y) == whole


def test_validation_split_is_seeded_disjoint_and_normalized() -> None:
    split = tasks.get("digits").load(None, False, True)
    a = DeviceData.from_split(split, val_fraction=0.25, seed=3, device=CPU)
    b = DeviceData.from_split(split, val_fraction=0.25, seed=3, device=CPU)
    c = DeviceData.from_split(split, val_fraction=0.25, seed=4, device=CPU)
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)
    assert a.n_train + len(a.val_y) == len(split.targets)
    assert len(a.val_y) == round(len(split.targets) * 0.25)
    assert a.train_x.mean().abs() < 1e-4 and (a.train_x.std() - 1).abs() < 1e-2


def test_validation_and_training_parts_share_no_example() -> None:
    n = 200
    numbered = Split(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n) % 10)
    data = DeviceData.from_split(numbered, val_fraction=0.3, seed=0, device=CPU)
    # Normalization is monotonic, so distinct raw images stay distinct values.
    train, val = set(data.train_x.flatten().tolist()), set(data.val_x.flatten().tolist())
    assert len(train) == 140 and len(val) == 60 and not train & val


def test_batches_are_full_distinct_and_seeded(digits: DeviceData) -> None:
    def epoch(seed: int) -> list[torch.Tensor]:
        return [y for _, y in digits.batches(100, torch.Generator().manual_seed(seed))]

    batches = epoch(5)
    assert len(batches) == digits.n_train // 100
    assert all(len(b) == 100 for b in batches)
    assert all(torch.equal(x, y) for x, y in zip(batches, epoch(5)))
    assert not all(torch.equal(x, y) for x, y in zip(batches, epoch(6)))


def test_crop_flip_moves_each_image_by_at_most_the_padding() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    out = crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        candidates = [
            window
            for dy, dx in itertools.product(range(5), range(5))
            for window in (padded[i, :, dy : dy + 6, dx : dx + 6],)
            for window in (window, window.flip(-1))
        ]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_pick_device() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device(None).type in ("cpu", "cuda")
    with pytest.raises(SettingsError, match="--device 'tpu9'"):
        pick_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(SettingsError, match="--device cuda: CUDA is not available"):
            pick_device("cuda")


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(
    tmp_path, digits: DeviceData
) -> None:
    from search.checkpoint import FileCheckpoint

    hp = Hyperparameters(lr=0.02, batch_size=64, optimizer="sgd", momentum=0.9)
    straight = fit(_model(), digits, hp, epochs=4, seed=3)

    checkpoint = FileCheckpoint(tmp_path / "t.pt", CPU)

    class Killed(Exception):
        pass

    def die_after_two(result: EpochResult) -> None:
        if result.epoch == 2:
            raise Killed  # after epoch 2 was checkpointed, as a SIGKILL would leave it

    with pytest.raises(Killed):
        fit(_model(), digits, hp, epochs=4, seed=3, on_epoch=die_after_two, checkpoint=checkpoint)
    assert not list(tmp_path.glob("*.partial"))

    seen: list[int] = []
    resumed = fit(
        _model(),
        digits,
        hp,
        epochs=4,
        seed=3,
        checkpoint=checkpoint,
        on_epoch=lambda r: seen.append(r.epoch),
    )
    assert checkpoint.restored_epochs == 2
    assert seen == [1, 2, 3, 4]  # restored epochs are handed on again, then training continues
    assert [r.train_loss for r in resumed] == [r.train_loss for r in straight]
    assert [r.value for r in resumed] == [r.value for r in straight]


def test_an_unreadable_checkpoint_is_a_clear_error(tmp_path) -> None:
    from search.checkpoint import FileCheckpoint
    from search.errors import StorageError

    path = tmp_path / "t.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(StorageError, match=f"checkpoint {path}: unreadable"):
        FileCheckpoint(path, CPU).load()


@pytest.mark.parametrize("augment", [False, True])
def test_a_pause_inside_an_epoch_continues_exactly(tmp_path, digits: DeviceData, augment) -> None:
    """Successive halving pauses a trial at a report inside an epoch: going on from its state
    trains the rest of that epoch on the same batches (and augmentations) as without the pause."""
    from search.checkpoint import FileCheckpoint

    hp = Hyperparameters(lr=0.02, batch_size=64, optimizer="sgd", momentum=0.9, augment=augment)
    kwargs = {"epochs": 2, "seed": 3, "reports_per_epoch": 4}
    straight = fit(_model(), digits, hp, **kwargs)

    checkpoint = FileCheckpoint(tmp_path / "t.pt", CPU)

    class Paused(Exception):
        pass

    def pause_at_step_6(result: EpochResult) -> None:
        if result.step == 6:  # half-way through epoch 2
            raise Paused

    with pytest.raises(Paused):
        fit(
            _model(),
            digits,
            hp,
            on_epoch=pause_at_step_6,
            checkpoint=checkpoint,
            save_at=6,
            **kwargs,
        )
    continued = fit(_model(), digits, hp, checkpoint=checkpoint, **kwargs)
    assert checkpoint.restored_epochs == 1.5
    assert [r.step for r in continued] == list(range(1, 9))
    assert [r.train_loss for r in continued] == [r.train_loss for r in straight]
    assert [r.value for r in continued] == [r.value for r in straight]


def test_a_captured_step_trains_as_the_eager_one(digits: DeviceData, tmp_path) -> None:
    """Where there are no CUDA graphs, ``step="captured"`` compiles the step with torch.compile:
    the rate a device tensor that the schedule sets in place (no recompiling per step), and the
    same training as the eager step, report for report; a checkpoint of it resumes eagerly."""
    hp = Hyperparameters(
        lr=3e-3, batch_size=64, optimizer="adamw", lr_schedule="cosine", warmup=0.1, grad_clip=1.0
    )
    runs = {}
    for mode in ("eager", "captured"):
        report = StepReport()
        history = fit(
            _model("mlp", 1), digits, hp, epochs=2, seed=1, reports_per_epoch=2, step=mode,
            step_report=report,
        )  # fmt: skip
        runs[report.ran] = history
        assert report.fallback is None
    assert set(runs) == {"eager", "compiled"}
    for eager, compiled in zip(runs["eager"], runs["compiled"], strict=True):
        assert compiled.train_loss == pytest.approx(eager.train_loss, rel=1e-4)
        assert compiled.value == pytest.approx(eager.value, abs=1 / 450)
    assert runs["compiled"][-1].value > 0.9

    # A checkpoint of the captured step (its rate a tensor) resumes eagerly, and ends as the
    # eager run does.
    checkpoint = FileCheckpoint(tmp_path / "trial.pt", CPU)
    fit(_model("mlp", 1), digits, hp, epochs=1, seed=1, reports_per_epoch=2, step="captured",
        checkpoint=checkpoint, schedule_epochs=2)  # fmt: skip
    saved = checkpoint.load()
    assert isinstance(saved["optimizer"]["param_groups"][0]["lr"], torch.Tensor)
    # The schedule's rates are saved as numbers: an eager CUDA optimizer (foreach) refuses a
    # tensor rate, and the schedule would hand it one.
    assert not _tensors_in(saved["schedule"])
    resumed = fit(
        _model("mlp", 1), digits, hp, epochs=2, seed=1, reports_per_epoch=2, checkpoint=checkpoint
    )
    assert resumed[-1].train_loss == pytest.approx(runs["eager"][-1].train_loss, rel=1e-4)
    model = _model()
    eager = make_optimizer(hp, model.parameters())
    restore_optimizer(eager, make_optimizer(hp, model.parameters(), capture_on=CPU).state_dict())
    assert not isinstance(eager.param_groups[0]["lr"], torch.Tensor)
    assert eager.param_groups[0]["foreach"] is None  # its own implementation, not the other's


def _tensors_in(value) -> bool:
    if isinstance(value, dict):
        return any(_tensors_in(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_tensors_in(v) for v in value)
    return isinstance(value, torch.Tensor)
