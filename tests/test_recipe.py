"""The recipe the loop trains with: AdamW, Nesterov, learning-rate schedules with warm-up, label
smoothing, gradient clipping and augmentation, sampled or fixed in a space, and a schedule resumed
from a checkpoint exactly."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import tiny_space, toml

from search import spaces, tasks
from search.contract import EpochResult, Hyperparameters
from search.errors import SpaceError
from search.tasks import models
from search.tasks.data import DeviceData
from search.train import fit, make_optimizer, make_schedule

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> DeviceData:
    split = tasks.get("digits").load(None, False, True)
    return DeviceData.from_split(split, val_fraction=0.25, seed=0, device=CPU)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("cnn", 2, (1, 8, 8), 10)


def _rates(hp: Hyperparameters, steps: int) -> list[float]:
    """The rate of each of ``steps`` optimizer steps under ``hp``'s schedule."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = make_optimizer(hp, [parameter])
    schedule = make_schedule(hp, optimizer, steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_each_schedule_over_the_steps_with_a_linear_warmup() -> None:
    base = Hyperparameters(lr=0.1, optimizer="sgd")
    constant = _rates(base, 100)
    assert constant == [0.1] * 100

    cosine = _rates(dataclasses.replace(base, lr_schedule="cosine", warmup=0.1), 100)
    assert cosine[0] == pytest.approx(0.001)  # warm-up starts at 1 % of the rate
    assert cosine[:10] == sorted(cosine[:10]) and cosine[10] == pytest.approx(0.1)
    assert cosine[10:] == sorted(cosine[10:], reverse=True) and cosine[-1] < 1e-3
    assert cosine[55] == pytest.approx(0.05, rel=0.05)  # half way down the cosine

    step = _rates(dataclasses.replace(base, lr_schedule="step", step_gamma=0.5), 100)
    assert step[49] == pytest.approx(0.1) and step[50] == pytest.approx(0.05)
    assert step[74] == pytest.approx(0.05) and step[75] == pytest.approx(0.025)

    onecycle = _rates(dataclasses.replace(base, lr_schedule="onecycle", warmup=0.2), 100)
    peak = max(range(100), key=onecycle.__getitem__)
    assert 18 <= peak <= 21 and onecycle[peak] == pytest.approx(0.1, rel=0.01)
    assert onecycle[0] < 0.01 and onecycle[-1] < 1e-3


def test_adamw_nesterov_and_their_settings_reach_torch_optim() -> None:
    parameters = [torch.nn.Parameter(torch.zeros(2))]
    adamw = make_optimizer(Hyperparameters(optimizer="adamw", weight_decay=0.05), parameters)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.05
    sgd = make_optimizer(Hyperparameters(optimizer="sgd", momentum=0.9, nesterov=True), parameters)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    # Nesterov without momentum is what torch refuses: it applies only where momentum > 0.
    plain = make_optimizer(Hyperparameters(optimizer="sgd", nesterov=True), parameters)
    assert not plain.defaults["nesterov"]


def test_clipping_bounds_every_step_and_smoothing_changes_the_loss(digits: DeviceData) -> None:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    norms: list[float] = []

    def gradient_norm(optimizer: torch.optim.Optimizer, *_: object) -> None:
        grads = [p.grad.norm() for group in optimizer.param_groups for p in group["params"]]
        norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))

    handle = register_optimizer_step_pre_hook(gradient_norm)  # every step the optimizer takes
    try:
        hp = Hyperparameters(lr=0.05, batch_size=64)
        fit(_model(), digits, dataclasses.replace(hp, grad_clip=0.5), epochs=1, seed=1)
        clipped = list(norms)
        norms.clear()
        fit(_model(), digits, hp, epochs=1, seed=1)
    finally:
        handle.remove()
    assert len(clipped) == digits.n_train // 64
    assert max(clipped) <= 0.5 + 1e-4
    assert max(norms) > 0.5  # without clipping the same steps go past it

    hp = Hyperparameters(lr=3e-3, batch_size=64)
    plain = fit(_model(), digits, hp, epochs=2, seed=1)
    smoothed = fit(_model(), digits, dataclasses.replace(hp, label_smoothing=0.2), epochs=2, seed=1)
    # Smoothed targets keep the loss away from 0: a confident model pays for its confidence.
    assert smoothed[-1].train_loss > plain[-1].train_loss + 0.1
    assert smoothed[-1].value > 0.9


def test_augmentation_is_a_loop_param_that_changes_the_batches() -> None:
    images = (
        torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8).repeat(50, 1, 1, 1)
    )
    data = DeviceData.from_split(
        tasks.Split(images, torch.arange(100) % 2), val_fraction=0.1, seed=0, device=CPU
    )
    assert not data.augment  # off by default for data that is not CIFAR-10

    def first(augment: bool) -> torch.Tensor:
        return next(data.batches(16, torch.Generator().manual_seed(0), augment))[0]

    assert torch.equal(first(False), first(False)) and not torch.equal(first(True), first(False))
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    original = data.batches

    def watch(batch_size, generator, augment=False):
        seen.append(augment)
        return original(batch_size, generator, augment)

    object.__setattr__(data, "batches", watch)
    fit(model, data, Hyperparameters(batch_size=16, augment=True), epochs=1, seed=0)
    fit(model, data, Hyperparameters(batch_size=16), epochs=1, seed=0)
    assert seen == [True, False]


def test_a_cosine_schedule_resumes_from_a_checkpoint_to_the_same_weights(
    tmp_path, digits: DeviceData
) -> None:
    from search.checkpoint import FileCheckpoint

    hp = Hyperparameters(
        lr=0.01,
        batch_size=64,
        optimizer="adamw",
        weight_decay=0.01,
        lr_schedule="cosine",
        warmup=0.2,
        grad_clip=1.0,
        label_smoothing=0.1,
    )
    straight_model = _model()
    straight = fit(straight_model, digits, hp, epochs=4, seed=3)

    class Killed(Exception):
        pass

    def die_after_two(result: EpochResult) -> None:
        if result.epoch == 2:
            raise Killed

    checkpoint = FileCheckpoint(tmp_path / "t.pt", CPU)
    with pytest.raises(Killed):
        fit(_model(), digits, hp, epochs=4, seed=3, on_epoch=die_after_two, checkpoint=checkpoint)
    resumed_model = _model()
    resumed = fit(resumed_model, digits, hp, epochs=4, seed=3, checkpoint=checkpoint)
    assert [r.train_loss for r in resumed] == [r.train_loss for r in straight]
    for a, b in zip(resumed_model.state_dict().values(), straight_model.state_dict().values()):
        assert torch.equal(a, b)

    # Without the schedule in the checkpoint the retry would restart its warm-up: not the same.
    state = (
        torch.load(tmp_path / "t.pt", weights_only=True) if (tmp_path / "t.pt").exists() else None
    )
    assert state is None or "schedule" in state


def test_training_fewer_epochs_follows_the_start_of_the_studys_schedule(
    digits: DeviceData,
) -> None:
    hp = Hyperparameters(lr=0.01, batch_size=64, lr_schedule="cosine")
    whole = fit(_model(), digits, hp, epochs=4, seed=2)
    first_two = fit(_model(), digits, hp, epochs=2, seed=2, schedule_epochs=4)
    assert [r.train_loss for r in first_two] == [r.train_loss for r in whole[:2]]
    own = fit(_model(), digits, hp, epochs=2, seed=2)  # a schedule over 2 epochs decays sooner
    assert own[1].train_loss != whole[1].train_loss


RECIPE_PARAMS = {
    "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
    "nesterov": {"type": "categorical", "choices": [True, False], "when": {"optimizer": ["sgd"]}},
    "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": ["sgd"]}},
    "lr_schedule": {"type": "categorical", "choices": ["constant", "cosine", "onecycle", "step"]},
    "warmup": {"type": "float", "low": 0.0, "high": 0.3},
    "step_gamma": {"type": "float", "low": 0.1, "high": 0.5, "when": {"lr_schedule": ["step"]}},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "grad_clip": {"type": "categorical", "choices": [0.0, 1.0]},
    "augment": {"type": "categorical", "choices": [False, True]},
}


def _recipe_space(sampled: bool) -> dict:
    space = tiny_space(epochs=2)
    del space["params"]["optimizer"], space["params"]["momentum"]
    if sampled:
        space["params"].update(RECIPE_PARAMS)
    else:
        space["task"]["recipe"] = {
            "optimizer": "sgd",
            "momentum": 0.9,
            "nesterov": True,
            "lr_schedule": "step",
            "warmup": 0.1,
            "step_gamma": 0.3,
            "label_smoothing": 0.1,
            "grad_clip": 2.0,
            "augment": False,  # crop and flip ruin 8×8 digits; a folder test fixes it on
        }
    return space


@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "fixed"])
def test_every_recipe_param_sampled_or_fixed_runs_a_study(cli, tmp_path, sampled: bool) -> None:
    (tmp_path / "recipe.toml").write_text(toml(_recipe_space(sampled)))
    result = cli("run", "--space", "recipe.toml", "--trials", "6", "--pruner", "none")
    assert result.returncode == 0, result.stderr
    import optuna

    study = optuna.load_study(
        study_name="recipe", storage="sqlite:///" + str(tmp_path / "studies/recipe.db")
    )
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)
    names = set().union(*(t.params for t in study.trials))
    if sampled:
        assert {"optimizer", "lr_schedule", "warmup", "label_smoothing", "augment"} <= names
        assert {t.params["lr_schedule"] for t in study.trials} != {"constant"}
    else:
        assert names.isdisjoint(RECIPE_PARAMS)  # fixed for the study: no trial samples them
        loaded = spaces.load(tmp_path / "recipe.toml")
        hp = loaded.hyperparameters(study.trials[0].params)
        assert (hp.optimizer, hp.lr_schedule, hp.step_gamma, hp.augment) == (
            "sgd",
            "step",
            0.3,
            False,
        )
    # The search found what the recipe can reach on the digits.
    assert max(t.value for t in study.trials) > 0.8


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {"params": {"scheduler": {"type": "categorical", "choices": ["cosine"]}}},
            "params.scheduler: not a param of the training loop; did you mean lr_schedule?",
        ),
        (
            {"params": {"warmup_epochs": {"type": "int", "low": 1, "high": 3}}},
            "params.warmup_epochs: not a param of the training loop; did you mean warmup?",
        ),
        (
            {"params": {"epochs": {"type": "int", "low": 1, "high": 3}}},
            "params.epochs: epochs is the study's, not a param: set task.epochs",
        ),
        (
            {"params": {"grad_clip": {"type": "float", "low": -1.0, "high": 1.0}}},
            "params.grad_clip: values must be a non-negative gradient norm (0: off), got -1.0",
        ),
        (
            {"params": {"lr_schedule": {"type": "categorical", "choices": ["linear"]}}},
            "params.lr_schedule: values must be one of constant, cosine, onecycle, step, got 'linear'",
        ),
        (
            {"params": {"augment": {"type": "float", "low": 0.0, "high": 1.0}}},
            "params.augment: must be categorical (its values are true or false)",
        ),
        (
            {"recipe": {"learning_rate": 0.1}},
            "task.recipe.learning_rate: not a param of the training loop; did you mean lr?",
        ),
        (
            {"recipe": {"warmup": 1.5}},
            "task.recipe.warmup: must be a share of the epochs in [0, 1), got 1.5",
        ),
        (
            {"recipe": {"lr": 0.1}},
            "params.lr: is also fixed in [task.recipe]; sample it or fix it, not both",
        ),
        (
            {"model_args": {"grad_clip": 1.0}},
            "task.model_args.grad_clip: the training loop's, not the model's: fix it in [task.recipe]",
        ),
    ],
)
def test_a_name_that_looks_like_the_loops_is_refused_with_the_loops_name(
    write_space, change: dict, says: str
) -> None:
    space = tiny_space()
    space["params"].update(change.get("params", {}))
    for key in ("recipe", "model_args"):
        if key in change:
            space["task"][key] = change[key]
    path = write_space(space)
    with pytest.raises(SpaceError) as e:
        spaces.load(path)
    assert str(e.value) == f"{path}: {says}" or str(e.value).startswith(f"{path}: {says}"), str(
        e.value
    )


def test_a_factory_of_your_own_is_told_the_loops_name_not_to_change_its_signature(
    tmp_path,
) -> None:
    from search.tasks import resolve

    (tmp_path / "net.py").write_text(
        "from torch import nn\n\n"
        "def build(*, input_shape, num_classes, width=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    for name, meant in (("learning_rte", "lr"), ("label_smooth", "label_smoothing")):
        space = tiny_space(model="net.py:build")
        del space["params"]["depth"]
        space["params"][name] = {"type": "float", "low": 0.1, "high": 0.2}
        path = tmp_path / "s.toml"
        path.write_text(toml(space))
        with pytest.raises(SpaceError) as e:
            resolve.model_factory(spaces.load(path))
        assert (
            f"task.model: {name} is not a param the training loop takes; did you mean {meant}?"
            in str(e.value)
        )
        assert "signature" not in str(e.value)


def test_the_default_recipe_is_todays_loop() -> None:
    hp = Hyperparameters()
    assert (hp.optimizer, hp.lr_schedule, hp.warmup, hp.grad_clip, hp.label_smoothing) == (
        "adam",
        "constant",
        0.0,
        0.0,
        0.0,
    )
    assert math.isclose(_rates(hp, 3)[-1], hp.lr)
