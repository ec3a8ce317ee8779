"""Scoring: each built-in metric summed over batches equals the metric of the whole split (scikit-
learn's, where it has one), the user's metrics are averaged over examples, and a space's kind,
loss, metric and direction are checked against each other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from search import scoring
from search.errors import SpaceError

CPU = torch.device("cpu")


def _batched(metric: scoring.Metric, output: torch.Tensor, target: torch.Tensor) -> float:
    for start in range(0, len(target), 7):  # uneven batches: the last is shorter
        metric.update(output[start : start + 7], target[start : start + 7])
    return metric.compute()


@pytest.fixture
def classified() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(50, 4, generator=generator), torch.randint(0, 4, (50,), generator=generator)


@pytest.fixture
def regressed() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(50, 2, generator=generator) * 10 + 3
    return target + torch.randn(50, 2, generator=generator), target


def test_builtin_classification_metrics_match_scikit_learn(classified) -> None:
    output, target = classified
    predicted = output.argmax(1).numpy()
    accuracy = scoring.Scoring().new_metric(CPU)
    assert _batched(accuracy, output, target) == pytest.approx(
        sk.accuracy_score(target.numpy(), predicted)
    )
    f1 = scoring.Scoring(metric="f1", outputs=4).new_metric(CPU)
    assert _batched(f1, output, target) == pytest.approx(
        sk.f1_score(target.numpy(), predicted, average="macro"), abs=1e-6
    )


def test_accuracy_per_position_counts_every_position() -> None:
    output = torch.zeros(2, 3, 2, 2)
    output[:, 1] = 1.0  # class 1 everywhere
    target = torch.tensor([[[1, 1], [0, 1]], [[2, 1], [1, 1]]])
    assert _batched(scoring.Scoring().new_metric(CPU), output, target) == pytest.approx(6 / 8)


def test_builtin_regression_metrics_match_scikit_learn(regressed) -> None:
    output, target = regressed
    kinds = {"rmse": sk.root_mean_squared_error, "mae": sk.mean_absolute_error}
    for name, reference in kinds.items():
        metric = scoring.Scoring("regression", "mse", name, "minimize", 2).new_metric(CPU)
        # Over every target value: scikit-learn's on the flattened arrays.
        expected = reference(target.numpy().ravel(), output.numpy().ravel())
        assert _batched(metric, output, target) == pytest.approx(expected, rel=1e-5)
    r2 = scoring.Scoring("regression", "mse", "r2", "maximize", 2).new_metric(CPU)
    assert _batched(r2, output, target) == pytest.approx(
        sk.r2_score(target.numpy(), output.numpy()), rel=1e-5
    )


def test_a_users_metric_is_the_mean_over_examples(tmp_path: Path, classified) -> None:
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "from torchmetrics.classification import MulticlassAccuracy\n\n"
        "def per_example(output, target):\n"
        "    return (output.argmax(1) == target).float()\n\n"
        "def batch_mean(output, target):\n"
        "    return (output.argmax(1) == target).float().mean()\n\n"
        "balanced = MulticlassAccuracy(num_classes=4, average='macro')\n"
    )
    output, target = classified
    expected = float((output.argmax(1) == target).float().mean())
    for name in ("per_example", "batch_mean"):  # a scalar counts as its batch's mean
        metric = scoring.Scoring(metric=f"mine.py:{name}", base=tmp_path).new_metric(CPU)
        assert _batched(metric, output, target) == pytest.approx(expected)
    stateful = scoring.Scoring(metric="mine.py:balanced", base=tmp_path)
    balanced = sk.balanced_accuracy_score(target.numpy(), output.argmax(1).numpy())
    for _ in range(2):  # each evaluation starts from a reset state
        assert _batched(stateful.new_metric(CPU), output, target) == pytest.approx(balanced)


def test_label_smoothing_reaches_the_loss(classified) -> None:
    from search.contract import Hyperparameters

    output, target = classified
    plain = scoring.Scoring().criterion(Hyperparameters())(output, target)
    smoothed = scoring.Scoring().criterion(Hyperparameters(label_smoothing=0.2))(output, target)
    expected = torch.nn.functional.cross_entropy(output, target, label_smoothing=0.2)
    assert float(smoothed) == pytest.approx(float(expected)) and float(smoothed) != float(plain)


def _space(**task: object) -> scoring.Scoring:
    def fail(key: str, problem: str) -> SpaceError:
        return SpaceError(f"s.toml: {key}: {problem}")

    return scoring.from_space(
        task.get("kind"),
        task.get("loss"),
        task.get("metric"),
        task.get("direction"),
        Path("."),
        fail,
    )


@pytest.mark.parametrize(
    ("task", "says"),
    [
        (
            {"kind": "ranking"},
            "task.kind: must be one of classification, regression, got 'ranking'",
        ),
        (
            {"metric": "rmse"},
            "task.metric: 'rmse' is for regression; a classification task takes accuracy, f1",
        ),
        (
            {"kind": "regression", "loss": "cross_entropy"},
            "task.loss: 'cross_entropy' is for classification",
        ),
        (
            {"metric": "acuracy"},
            "task.metric: unknown metric 'acuracy'; built in: accuracy, f1, rmse, mae, r2",
        ),
        (
            {"metric": "m.py:dice"},
            "task.direction: missing: say whether your metric m.py:dice is better higher",
        ),
        (
            {"kind": "regression", "direction": "maximize"},
            "task.direction: metric rmse is minimized, not maximized",
        ),
        ({"direction": "up"}, "task.direction: must be maximize or minimize, got 'up'"),
    ],
)
def test_a_space_s_scoring_keys_are_checked_against_each_other(task: dict, says: str) -> None:
    with pytest.raises(SpaceError) as e:
        _space(**task)
    assert str(e.value).startswith(f"s.toml: {says}"), str(e.value)


def test_the_defaults_of_each_kind() -> None:
    assert _space() == scoring.Scoring(base=Path("."))
    regression = _space(kind="regression")
    assert (regression.loss, regression.metric, regression.direction) == ("mse", "rmse", "minimize")
    own = _space(metric="m.py:dice", direction="maximize")
    assert own.metric_name == "dice" and own.own_metric and not own.own_loss
    assert np.isclose(scoring.Scoring().best([0.2, 0.9, 0.5]), 0.9)
    assert regression.best([0.2, 0.9, 0.5]) == 0.2
