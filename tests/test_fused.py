"""Trials fused into one batched model (`search.fused_train`, `search.fused_trials`): the same
training per trial as one at a time, members pruned or diverged while the rest go on, and a study
run with ``--fuse`` whose trials are each their own Optuna trial with the results that the same
params and seeds give one at a time."""

from __future__ import annotations

import signal
import subprocess
import time

import optuna
import pytest
import torch
from conftest import search_command, tiny_space, toml

from search import study as studies
from search import tasks
from search.errors import Diverged
from search.fused_train import Member, fit_fused
from search.tasks import models
from search.tasks.data import DeviceData
from search.train import Hyperparameters, fit

CPU = torch.device("cpu")

# Four recipes that share the model's shape and the batch size, and nothing else.
RECIPES = [
    Hyperparameters(
        lr=3e-3, batch_size=64, optimizer="adamw", lr_schedule="cosine", warmup=0.1, grad_clip=1.0
    ),
    Hyperparameters(lr=1e-2, batch_size=64, optimizer="sgd", momentum=0.9, lr_schedule="onecycle"),
    Hyperparameters(lr=1e-3, batch_size=64, optimizer="rmsprop", label_smoothing=0.1, augment=True),
    Hyperparameters(lr=5e-2, batch_size=64, optimizer="sgd", weight_decay=1e-3),
]


@pytest.fixture(scope="module")
def digits() -> DeviceData:
    split = tasks.get("digits").load(None, False, True)
    return DeviceData.from_split(split, val_fraction=0.25, seed=0, device=CPU)


def _model(seed: int, family: str = "cnn", depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    # The CNN has batch norm: stacked buffers, updated in place by the batched forward.
    return models.build(family, depth, (1, 8, 8), 10)


def _prune_at(step: int):
    def report(result) -> None:
        if result.step == step:
            raise optuna.TrialPruned(f"pruned at epoch {result.epoch}")

    return report


def _close(alone, together) -> None:
    assert [r.step for r in alone] == [r.step for r in together]
    for a, b in zip(alone, together, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-3)
        assert abs(b.value - a.value) <= 2 / 450  # at most two of the 450 validation digits


def test_fused_members_train_as_each_alone_and_one_pruned_leaves_the_rest(digits) -> None:
    alone = [
        fit(_model(10 + i), digits, hp, epochs=3, seed=i, reports_per_epoch=2)
        for i, hp in enumerate(RECIPES)
    ]
    members = [
        Member(_model(10 + i), hp, i, on_epoch=_prune_at(2) if i == 1 else None)
        for i, hp in enumerate(RECIPES)
    ]
    report = fit_fused(members, digits, epochs=3, reports_per_epoch=2)

    assert report.ran == "eager"
    assert isinstance(members[1].stopped, optuna.TrialPruned)
    _close(alone[1][:2], members[1].history)  # up to where it was pruned
    for i in (0, 2, 3):  # the others went on in a group of three, as they would have alone
        assert members[i].stopped is None
        _close(alone[i], members[i].history)
    # Each member's own weights (and normalization statistics) moved: they are not shared.
    weights = [next(m.model.parameters()) for m in members]
    assert not torch.equal(weights[0], weights[2])
    running = [dict(m.model.named_buffers())["1.running_mean"] for m in members]
    assert not torch.equal(running[0], running[3])


def test_a_diverging_member_stops_alone_and_a_shape_apart_is_refused(digits) -> None:
    recipes = [RECIPES[0], Hyperparameters(lr=1e3, batch_size=64, optimizer="sgd", momentum=0.9)]
    members = [Member(_model(i, "mlp"), hp, i) for i, hp in enumerate(recipes)]
    fit_fused(members, digits, epochs=2)
    assert members[0].stopped is None and len(members[0].history) == 2
    assert isinstance(members[1].stopped, Diverged)
    assert members[1].history == []

    with pytest.raises(ValueError, match="share the batch size and every model shape"):
        fit_fused(
            [
                Member(_model(0), RECIPES[0], 0),
                Member(models.build("cnn", 1, (1, 8, 8), 10), RECIPES[0], 1),
            ],
            digits,
            epochs=1,
        )


def _trials(folder, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/studies/{name}.db")
    return sorted(study.trials, key=lambda t: t.number)


def test_a_fused_study_gives_each_trial_the_result_it_has_alone(cli, tmp_path) -> None:
    """``--fuse 4``: trials asked in groups of one shape, each its own Optuna trial; the same
    params, in the same trial numbers (so the same seeds), run one at a time give the same
    values."""
    (tmp_path / "tiny.toml").write_text(toml(tiny_space()))
    fused = cli(
        "run", "--space", "tiny.toml", "--study", "fused", "--trials", "8", "--fuse", "4",
        "--sampler", "random", "--pruner", "none",
    )  # fmt: skip
    assert fused.returncode == 0, fused.stderr
    assert "Warning" not in fused.stderr
    trials = _trials(tmp_path, "fused")
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    for group in (trials[:4], trials[4:]):  # one shape per group: depth and batch size shared
        assert len({(t.params["depth"], t.params["batch_size"]) for t in group}) == 1
        assert len({t.params["lr"] for t in group}) == 4  # the recipe sampled per trial
        assert all(studies.trial_attrs(t)["fused"] == 4 for t in group)
    assert not list((tmp_path / "studies" / "checkpoints" / "fused").glob("*.pt"))

    created = cli("run", "--space", "tiny.toml", "--study", "alone", "--trials", "0",
                  "--sampler", "random", "--pruner", "none")  # fmt: skip
    assert created.returncode == 0, created.stderr
    alone = optuna.load_study(study_name="alone", storage=f"sqlite:///{tmp_path}/studies/alone.db")
    for trial in trials:
        alone.enqueue_trial(trial.params)
    again = cli("run", "--study", "alone", "--trials", "8")
    assert again.returncode == 0, again.stderr
    for a, b in zip(_trials(tmp_path, "alone"), trials, strict=True):
        assert a.params == b.params
        assert "fused" not in studies.trial_attrs(a)
        assert b.value == pytest.approx(a.value, abs=2 / 450)


def test_a_fused_study_prunes_members_fails_a_group_out_of_memory_and_refuses_to_pause(
    cli, tmp_path
) -> None:
    (tmp_path / "tiny.toml").write_text(toml(tiny_space(epochs=3)))
    # Groups at batch 128 run out of memory at their first step (the fault hook), the rest train.
    run = cli("run", "--space", "tiny.toml", "--trials", "12", "--fuse", "4", "--pruner", "median",
              "--sampler", "random", "--reports-per-epoch", "2",
              env={"SEARCH_FAULT_OOM_BATCH": "128"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    trials = _trials(tmp_path, "tiny")
    for trial in trials:
        failed = trial.user_attrs.get("fail_reason")
        assert (failed == "oom") == (trial.params["batch_size"] == 128), trial.number
        assert (trial.state.name == "FAIL") == (failed == "oom")
    assert {t.params["batch_size"] for t in trials} == {64, 128}
    trials = [t for t in trials if t.params["batch_size"] == 64]
    states = {t.state.name for t in trials}
    assert states <= {"COMPLETE", "PRUNED"} and "PRUNED" in states
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    # A member stopped at its report, while the others of its group trained on.
    assert any(studies.trial_attrs(t)["epochs_run"] < 3 for t in pruned)
    assert all(t.value is not None for t in pruned)

    halving = cli("run", "--space", "tiny.toml", "--study", "h", "--trials", "4", "--fuse", "2",
                  "--pruner", "halving")  # fmt: skip
    assert halving.returncode != 0
    assert "--fuse 2 and --pruner halving: fused trials cannot pause" in halving.stderr
    assert not (tmp_path / "studies" / "h.db").exists()


def test_a_fused_group_killed_mid_training_resumes_each_trial_from_its_checkpoint(
    cli, tmp_path
) -> None:
    """SIGKILL once every member of a group has saved an epoch: each member's retry continues
    alone from its own checkpoint, with its own params and seed; the study ends at its target."""
    (tmp_path / "tiny.toml").write_text(toml(tiny_space(epochs=30)))
    checkpoints = tmp_path / "studies" / "checkpoints" / "tiny"
    flags = ["--space", "tiny.toml", "--trials", "4", "--fuse", "4", "--pruner", "none",
             "--sampler", "random", "--heartbeat", "1",
             "--reports-per-epoch", "1"]  # fmt: skip
    run = subprocess.Popen(
        [*search_command(), "run", *flags], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(checkpoints.glob("*.pt"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run.poll() is None, "the group finished before it could be killed"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    time.sleep(3.5)  # three missed heartbeats: the killed trials are stale, and retried

    again = cli("run", *flags)
    assert again.returncode == 0, again.stderr
    trials = _trials(tmp_path, "tiny")
    retries = [t for t in trials if "retry_of" in studies.trial_attrs(t)]
    assert len(retries) == 4 and studies.count_finished(_study(tmp_path)) == 4
    for retry in retries:
        attrs = studies.trial_attrs(retry)
        origin = trials[attrs["retry_of"]]
        assert retry.state.name == "COMPLETE" and retry.params == origin.params
        assert attrs["seed"] == studies.trial_seed(0, origin.number)
        assert attrs["resumed_from_epoch"] >= 1 and "fused" not in attrs  # alone, continued
        assert sorted(retry.intermediate_values) == list(range(1, 31))
    assert not list(checkpoints.glob("*.pt"))


def _study(folder) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder}/studies/tiny.db")
