from __future__ import annotations

import copy
from typing import Any

import optuna
import pytest
from conftest import tiny_space

from search import spaces
from search.errors import SpaceError
from search.tasks import models

SHIPPED = sorted(p.stem for p in spaces.SHIPPED_DIR.glob("*.toml"))


def test_the_four_spaces_ship() -> None:
    assert {"digits", "mnist", "fashion-mnist", "cifar10"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_samples_every_hyperparameter(name: str) -> None:
    space = spaces.load(name)
    assert [p.name for p in space.params] == [
        "lr",
        "batch_size",
        "optimizer",
        "momentum",
        "weight_decay",
        "depth",
    ]
    by_name = {p.name: p for p in space.params}
    assert by_name["lr"].distribution.log and by_name["weight_decay"].distribution.log
    assert set(by_name["optimizer"].distribution.choices) == {"sgd", "adam", "rmsprop"}
    assert by_name["momentum"].when == {"optimizer": ("sgd", "rmsprop")}


def test_default_space_is_digits() -> None:
    assert spaces.load(None).task == "digits"


def test_momentum_is_sampled_only_for_optimizers_that_use_it() -> None:
    space = spaces.load("digits")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        params = space.suggest(trial)
        seen.add(params["optimizer"])
        assert ("momentum" in params) == (params["optimizer"] in ("sgd", "rmsprop"))
        assert set(params) - {"momentum"} == {
            "lr",
            "batch_size",
            "optimizer",
            "weight_decay",
            "depth",
        }
        study.tell(trial, 0.5)
    assert seen == {"sgd", "adam", "rmsprop"}


def test_a_bare_name_is_found_in_the_working_directorys_spaces(
    tmp_path, monkeypatch, write_space
) -> None:
    write_space(tiny_space(), name="mine")
    monkeypatch.chdir(tmp_path)
    assert spaces.load("mine").epochs == 2


def _with(change: dict[str, Any]) -> dict[str, Any]:
    """The tiny space with dotted keys set (None deletes)."""
    data = copy.deepcopy(tiny_space())
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return data


# (what to change, the key the message names, what the message says)
MALFORMED = [
    ({"paramz": {"x": 1}}, "paramz", "unknown key"),
    ({"description": 3}, "description", "must be a string"),
    ({"task": None}, "task", "missing [task] table"),
    ({"task.epochs": None}, "task.epochs", "missing"),
    ({"task.epochs": "ten"}, "task.epochs", "must be an integer, got 'ten'"),
    ({"task.epochs": 0}, "task.epochs", "at least 1, got 0"),
    ({"task.name": "nope"}, "task.name", "unknown task 'nope'"),
    ({"task.model": "vgg"}, "task.model", "task digits has no model 'vgg'"),
    ({"task.colour": "red"}, "task.colour", "unknown key"),
    ({"task.val_fraction": 1.5}, "task.val_fraction", "between 0 and 1, got 1.5"),
    ({"params": None}, "params", "missing [params] table"),
    ({"params": {}}, "params", "at least one param"),
    (
        {"params.learning_rate": {"type": "float", "low": 0.1, "high": 1.0}},
        "params.learning_rate",
        "not a param of the training loop; did you mean lr?",
    ),
    ({"params.lr": 0.1}, "params.lr", "must be a table, got 0.1"),
    ({"params.lr.type": None}, "params.lr", "missing type"),
    (
        {"params.lr.type": "uniform"},
        "params.lr",
        "type must be one of float, int, categorical, got 'uniform'",
    ),
    ({"params.lr.lo": 0.1}, "params.lr", "unknown key 'lo'"),
    ({"params.lr.high": None}, "params.lr", "missing high"),
    (
        {"params.lr.low": 0.1, "params.lr.high": 0.01},
        "params.lr",
        "low must be < high, got low=0.1 high=0.01",
    ),
    ({"params.lr.low": 0.1, "params.lr.high": 0.1}, "params.lr", "low must be < high"),
    ({"params.lr.low": "small"}, "params.lr", "low must be a number, got 'small'"),
    ({"params.lr.low": True}, "params.lr", "low must be a number, got True"),
    ({"params.lr.log": "yes"}, "params.lr", "log must be true or false"),
    ({"params.weight_decay.low": 0.0}, "params.weight_decay", "log needs low > 0, got low=0.0"),
    (
        {"params.lr.low": -1.0, "params.lr.log": False},
        "params.lr",
        "must be a positive number, got -1.0",
    ),
    ({"params.lr.step": 0.01}, "params.lr", "step cannot be combined with log"),
    ({"params.depth.step": 0}, "params.depth", "step must be a positive int"),
    ({"params.depth.type": "float"}, "params.depth", "must be int or categorical"),
    ({"params.depth.high": 99}, "params.depth", "allows depth up to"),
    ({"params.depth.low": 0}, "params.depth", "must be a positive integer, got 0"),
    ({"params.momentum.high": 1.0}, "params.momentum", "a number in [0, 1), got 1.0"),
    ({"params.batch_size.choices": []}, "params.batch_size", "choices must not be empty"),
    ({"params.batch_size.choices": 64}, "params.batch_size", "choices must be a list, got 64"),
    ({"params.batch_size.choices": [64, 64]}, "params.batch_size", "choices must be distinct"),
    (
        {"params.batch_size.choices": [32.5]},
        "params.batch_size",
        "choices must be integers, got 32.5",
    ),
    (
        {"params.batch_size.choices": [0, 64]},
        "params.batch_size",
        "must be a positive integer, got 0",
    ),
    ({"params.batch_size.choices": None}, "params.batch_size", "missing choices"),
    (
        {"params.optimizer.choices": ["sgd", "lamb"]},
        "params.optimizer",
        "one of sgd, adam, adamw, rmsprop, got 'lamb'",
    ),
    (
        {"params.optimizer": {"type": "float", "low": 0.0, "high": 1.0}},
        "params.optimizer",
        "must be categorical",
    ),
    (
        {"params.momentum.when": {"optimiser": ["sgd"]}},
        "params.momentum.when",
        "'optimiser', which is not a param defined above it",
    ),
    (
        {"params.momentum.when": {"optimizer": ["adamw"]}},
        "params.momentum.when",
        "'adamw' is not one of its choices",
    ),
    ({"params.momentum.when": {"optimizer": []}}, "params.momentum.when", "must not be empty"),
    (
        {"params.momentum.when": {"lr": [0.01]}},
        "params.momentum.when",
        "can only name a categorical param",
    ),
    ({"params.momentum.when": "sgd"}, "params.momentum.when", "must be a table"),
]


@pytest.mark.parametrize(
    ("change", "key", "says"), MALFORMED, ids=[m[1] + ":" + m[2][:24] for m in MALFORMED]
)
def test_malformed_space_names_file_key_and_problem(write_space, change, key, says) -> None:
    path = write_space(_with(change))
    with pytest.raises(SpaceError) as e:
        spaces.load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: {key}")
    assert says in message
    assert "\n" not in message


def test_a_condition_must_name_a_param_defined_above_it(write_space) -> None:
    data = tiny_space()
    params = data["params"]
    # momentum before optimizer: its condition names a param not yet defined
    data["params"] = {
        "momentum": params["momentum"],
        **{k: v for k, v in params.items() if k != "momentum"},
    }
    with pytest.raises(
        SpaceError,
        match=r"params\.momentum\.when: names 'optimizer', which is not a param defined above",
    ):
        spaces.load(write_space(data))


def test_invalid_toml_is_reported_with_the_file(write_space) -> None:
    path = write_space("[task]\nname = digits\n")
    with pytest.raises(SpaceError, match=rf"^{path}: not valid TOML"):
        spaces.load(path)


def test_missing_space_file_and_unknown_name(tmp_path) -> None:
    with pytest.raises(SpaceError, match="space file .*nope.toml does not exist"):
        spaces.load(tmp_path / "nope.toml")
    with pytest.raises(SpaceError, match="no space named 'nope'.*shipped: cifar10, digits"):
        spaces.load("nope")


def test_diff_names_the_first_changed_key() -> None:
    a = tiny_space()
    b = _with({"params.lr.high": 0.5})
    assert spaces.diff(a, a) is None
    assert spaces.diff(a, b) == "params.lr.high"
    assert spaces.diff(a, _with({"params.depth": None})) == "params.depth"


def test_every_depth_a_shipped_space_allows_is_within_its_model_family() -> None:
    for name in SHIPPED:
        space = spaces.load(name)
        depth = next(p for p in space.params if p.name == "depth").distribution
        assert 1 <= depth.low and depth.high <= models.MAX_DEPTH[space.model]
