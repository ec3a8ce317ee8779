"""Space files: TOML → validated `Space`; `Space.suggest(trial)` samples one configuration.

A space file has a ``[task]`` table (task name, model family, epochs) and one ``[params.NAME]``
table per sampled hyperparameter. A param with ``when = { optimizer = ["sgd"] }`` is sampled only
when that earlier categorical param took one of the listed values. Hyperparameters a space does not
sample keep the defaults of `search.train.Hyperparameters` (and the model's depth 1).

Every problem is reported as ``<file>: <key>: <what is wrong>, got <value>``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from search import tasks
from search.errors import SearchError, SpaceError
from search.tasks import models
from search.train import OPTIMIZERS

# Where shipped spaces live; `--space mnist` finds spaces/mnist.toml here or in ./spaces.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "spaces"
DEFAULT_SPACE = "digits"

Scalar = bool | int | float | str


@dataclass(frozen=True)
class Domain:
    """What values a hyperparameter may take, whatever distribution samples it."""

    kind: type  # float (any number), int, or str
    ok: Callable[[Any], bool]
    says: str


HYPERPARAMETERS: dict[str, Domain] = {
    "lr": Domain(float, lambda v: v > 0, "a positive number"),
    "batch_size": Domain(int, lambda v: v >= 1, "a positive integer"),
    "optimizer": Domain(str, lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "momentum": Domain(float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": Domain(float, lambda v: v >= 0, "a non-negative number"),
    "depth": Domain(int, lambda v: v >= 1, "a positive integer"),
}

_TOP_KEYS = {"description", "task", "params"}
_TASK_KEYS = {"name": str, "model": str, "epochs": int, "val_fraction": float}
_REQUIRED_TASK_KEYS = ("name", "model", "epochs")
_PARAM_KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}


@dataclass(frozen=True)
class Param:
    name: str
    distribution: optuna.distributions.BaseDistribution
    when: dict[str, tuple[Scalar, ...]] = field(default_factory=dict)

    def active(self, sampled: dict[str, Any]) -> bool:
        return all(
            name in sampled and sampled[name] in values for name, values in self.when.items()
        )


@dataclass(frozen=True)
class Space:
    """A validated search space.

    Attributes:
        name: the file's stem; the default study name.
        source: where it was read from (a path, or ``study X`` for a stored space).
        task, model, epochs, val_fraction: the ``[task]`` table.
        params: the sampled hyperparameters in file order.
        data: the parsed file as plain data; stored on the study to detect a changed space.
    """

    name: str
    source: str
    task: str
    model: str
    epochs: int
    val_fraction: float
    params: tuple[Param, ...]
    data: dict[str, Any]

    @property
    def has_conditions(self) -> bool:
        return any(p.when for p in self.params)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every param whose condition holds, in file order."""
        sampled: dict[str, Any] = {}
        for param in self.params:
            if param.active(sampled):
                sampled[param.name] = _suggest(trial, param.name, param.distribution)
        return sampled


def _suggest(trial: optuna.Trial, name: str, d: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(d, optuna.distributions.FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
    if isinstance(d, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
    return trial.suggest_categorical(name, d.choices)


def resolve(name_or_path: str | None) -> Path:
    """A space path from ``--space``: a path, or a bare name found in ./spaces or the shipped spaces."""
    if name_or_path is None:
        name_or_path = DEFAULT_SPACE
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.parent != Path("."):
        if not path.is_file():
            raise SpaceError(f"space file {name_or_path} does not exist")
        return path
    for folder in (Path("spaces"), SHIPPED_DIR):
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))
    raise SpaceError(
        f"no space named {name_or_path!r} in ./spaces or {SHIPPED_DIR}; shipped: {', '.join(shipped)}"
    )


def load(name_or_path: str | Path | None = None) -> Space:
    """Read and validate a space file (a path, or a bare name such as ``mnist``)."""
    path = resolve(None if name_or_path is None else str(name_or_path))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SpaceError(f"{path}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"{path}: cannot read: {e}") from None
    return from_data(data, name=path.stem, source=str(path))


def from_data(data: dict[str, Any], *, name: str, source: str) -> Space:
    """Validate parsed space data (from a file, or as stored on a study)."""

    def fail(key: str, problem: str) -> SpaceError:
        return SpaceError(f"{source}: {key}: {problem}")

    if not isinstance(data, dict):
        raise SpaceError(f"{source}: a space must be a table, got {type(data).__name__}")
    for key in data:
        if key not in _TOP_KEYS:
            raise fail(key, f"unknown key; a space has {', '.join(sorted(_TOP_KEYS))}")
    if "description" in data and not isinstance(data["description"], str):
        raise fail("description", f"must be a string, got {data['description']!r}")

    task_table = _table(data, "task", fail)
    for key in task_table:
        if key not in _TASK_KEYS:
            raise fail(f"task.{key}", f"unknown key; [task] has {', '.join(_TASK_KEYS)}")
    for key in _REQUIRED_TASK_KEYS:
        if key not in task_table:
            raise fail(f"task.{key}", "missing")
    for key, kind in _TASK_KEYS.items():
        if key in task_table and not _is(task_table[key], kind):
            raise fail(f"task.{key}", f"must be {_KIND_WORD[kind]}, got {task_table[key]!r}")
    try:
        task = tasks.get(task_table["name"])
    except SearchError as e:
        raise fail("task.name", str(e)) from None
    model = task_table["model"]
    if model not in task.models:
        raise fail(
            "task.model",
            f"task {task.name} has no model {model!r}; it has {', '.join(task.models)}",
        )
    epochs = task_table["epochs"]
    if epochs < 1:
        raise fail("task.epochs", f"must be at least 1, got {epochs}")
    val_fraction = float(task_table.get("val_fraction", 0.1))
    if not 0 < val_fraction < 1:
        raise fail("task.val_fraction", f"must be between 0 and 1, got {val_fraction}")

    params_table = _table(data, "params", fail)
    if not params_table:
        raise fail("params", "a space must sample at least one param")
    params: list[Param] = []
    for pname, spec in params_table.items():
        key = f"params.{pname}"
        if pname not in HYPERPARAMETERS:
            raise fail(key, f"unknown hyperparameter; known: {', '.join(HYPERPARAMETERS)}")
        if not isinstance(spec, dict):
            raise fail(key, f"must be a table, got {spec!r}")
        distribution = _distribution(spec, HYPERPARAMETERS[pname], lambda p, k=key: fail(k, p))
        if pname == "depth":
            top = max(extremes(distribution))
            if top > models.MAX_DEPTH[model]:
                raise fail(
                    key, f"model {model} allows depth up to {models.MAX_DEPTH[model]}, got {top}"
                )
        when = _condition(spec.get("when"), params, lambda p, k=key: fail(f"{k}.when", p))
        params.append(Param(pname, distribution, when))

    return Space(
        name=name,
        source=source,
        task=task.name,
        model=model,
        epochs=epochs,
        val_fraction=val_fraction,
        params=tuple(params),
        data=data,
    )


_KIND_WORD = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_KIND_PLURAL = {str: "strings", int: "integers", float: "numbers"}


def _is(value: Any, kind: type) -> bool:
    """TOML type check; bools are not numbers, and integers are numbers."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _table(
    data: dict[str, Any], key: str, fail: Callable[[str, str], SpaceError]
) -> dict[str, Any]:
    if key not in data:
        raise fail(key, f"missing [{key}] table")
    if not isinstance(data[key], dict):
        raise fail(key, f"must be a table, got {data[key]!r}")
    return data[key]


def _distribution(
    spec: dict[str, Any], domain: Domain, fail: Callable[[str], SpaceError]
) -> optuna.distributions.BaseDistribution:
    kind = spec.get("type")
    if kind is None:
        raise fail("missing type; one of float, int, categorical")
    if kind not in _PARAM_KEYS:
        raise fail(f"type must be one of float, int, categorical, got {kind!r}")
    for key in spec:
        if key not in _PARAM_KEYS[kind]:
            raise fail(
                f"unknown key {key!r} for type {kind}; allowed: {', '.join(sorted(_PARAM_KEYS[kind]))}"
            )
    if kind == "categorical":
        distribution = _categorical(spec, domain, fail)
    else:
        distribution = _range(kind, spec, domain, fail)
    for value in extremes(distribution):
        if not domain.ok(value):
            raise fail(f"values must be {domain.says}, got {value!r}")
    return distribution


def _categorical(
    spec: dict[str, Any], domain: Domain, fail: Callable[[str], SpaceError]
) -> optuna.distributions.CategoricalDistribution:
    if "choices" not in spec:
        raise fail("missing choices")
    choices = spec["choices"]
    if not isinstance(choices, list):
        raise fail(f"choices must be a list, got {choices!r}")
    if not choices:
        raise fail("choices must not be empty")
    for choice in choices:
        if not _is(choice, domain.kind):
            raise fail(f"choices must be {_KIND_PLURAL[domain.kind]}, got {choice!r}")
    if len(set(choices)) != len(choices):
        raise fail(f"choices must be distinct, got {choices!r}")
    return optuna.distributions.CategoricalDistribution(choices)


def _range(
    kind: str, spec: dict[str, Any], domain: Domain, fail: Callable[[str], SpaceError]
) -> optuna.distributions.BaseDistribution:
    if domain.kind is str:
        raise fail(f"must be categorical (its values are {domain.says}), got type {kind!r}")
    if kind == "float" and domain.kind is int:
        raise fail("must be int or categorical (its values are integers), got type 'float'")
    number = int if kind == "int" else float
    for key in ("low", "high"):
        if key not in spec:
            raise fail(f"missing {key}")
        if not _is(spec[key], number):
            raise fail(f"{key} must be {_KIND_WORD[number]}, got {spec[key]!r}")
        if not math.isfinite(spec[key]):
            raise fail(f"{key} must be finite, got {spec[key]!r}")
    low, high = spec["low"], spec["high"]
    if low >= high:
        raise fail(f"low must be < high, got low={low} high={high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"log must be true or false, got {log!r}")
    if log and low <= 0:
        raise fail(f"log needs low > 0, got low={low}")
    step = spec.get("step")
    if step is not None:
        if log:
            raise fail("step cannot be combined with log = true")
        if not _is(step, number) or step <= 0:
            raise fail(f"step must be a positive {kind}, got {step!r}")
    if kind == "int":
        return optuna.distributions.IntDistribution(low, high, log=log, step=step or 1)
    return optuna.distributions.FloatDistribution(float(low), float(high), log=log, step=step)


def extremes(distribution: optuna.distributions.BaseDistribution) -> list[Any]:
    """The values that bound what a distribution can produce (its ends, or all its choices)."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def _condition(
    when: Any, earlier: list[Param], fail: Callable[[str], SpaceError]
) -> dict[str, tuple[Scalar, ...]]:
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        raise fail(f'must be a table like {{ optimizer = ["sgd"] }}, got {when!r}')
    by_name = {p.name: p for p in earlier}
    condition: dict[str, tuple[Scalar, ...]] = {}
    for name, values in when.items():
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise fail(
                f"names {name!r}, which is not a param defined above it (defined above: {known})"
            )
        distribution = by_name[name].distribution
        if not isinstance(distribution, optuna.distributions.CategoricalDistribution):
            raise fail(f"{name}: a condition can only name a categorical param")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise fail(f"{name}: the list of values must not be empty")
        for value in values:
            if value not in distribution.choices:
                raise fail(
                    f"{name}: {value!r} is not one of its choices {list(distribution.choices)}"
                )
        condition[name] = tuple(values)
    return condition


def diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str | None:
    """The first dotted key where two parsed spaces differ, or None when they are equal."""
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        if key not in a or key not in b:
            return path
        if isinstance(a[key], dict) and isinstance(b[key], dict):
            inner = diff(a[key], b[key], path + ".")
            if inner:
                return inner
        elif a[key] != b[key]:
            return path
    return None
