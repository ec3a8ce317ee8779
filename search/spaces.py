"""Space files: TOML → validated `Space`; `Space.suggest(trial)` samples one configuration.

A space file has a ``[task]`` table and one ``[params.NAME]`` table per sampled param. The task is
either a registered one (``name = "mnist"``) or the user's own data (``data = "data/flowers"``, a
folder, a .npz/.pt file or a ``FILE.py:NAME`` loader); the model is a built-in family or the
user's own factory (``model = "models.py:build"``), with fixed ``[task.model_args]``; the task's
``kind``, ``loss``, ``metric`` and ``direction`` are `search.scoring`'s. Paths are relative to the
space file's folder. A param with ``when = { optimizer = ["sgd"] }`` is sampled only when that
earlier categorical param took one of the listed values. Params the training loop takes (the
recipe, `search.contract.Hyperparameters`) are sampled, fixed for the study in ``[task.recipe]``,
or keep the loop's defaults; every other param goes to the model factory, and a name that looks
like the loop's (``learning_rate``) is refused with the loop's name. Nothing here reads the data or
imports the user's code: that is `search.tasks.resolve`, which also checks the factory's
signature.

Every problem is reported as ``<file>: <key>: <what is wrong>, got <value>``.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from search import given, references, scoring, tasks
from search.contract import (
    LOOP_PARAMS,
    LR_SCHEDULES,
    NEAR_MISSES,
    OPTIMIZERS,
    Hyperparameters,
    closest_loop_param,
    split_params,
)
from search.errors import SearchError, SpaceError
from search.given import NOTHING, Given
from search.scoring import Scoring
from search.tasks import factory, models

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
    "nesterov": Domain(bool, lambda v: True, "true or false"),
    "weight_decay": Domain(float, lambda v: v >= 0, "a non-negative number"),
    "lr_schedule": Domain(str, lambda v: v in LR_SCHEDULES, f"one of {', '.join(LR_SCHEDULES)}"),
    "warmup": Domain(float, lambda v: 0 <= v < 1, "a share of the epochs in [0, 1)"),
    "step_gamma": Domain(float, lambda v: 0 < v <= 1, "a factor in (0, 1]"),
    "label_smoothing": Domain(float, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "grad_clip": Domain(float, lambda v: v >= 0, "a non-negative gradient norm (0: off)"),
    "augment": Domain(bool, lambda v: True, "true or false"),
    "depth": Domain(int, lambda v: v >= 1, "a positive integer"),
}
assert set(HYPERPARAMETERS) == {*LOOP_PARAMS, "depth"}, "every loop param needs a domain"
# Any other param goes to a model factory of the user's, which decides what its values mean.
FACTORY_PARAM = Domain(object, lambda v: True, "any value")

_TOP_KEYS = {"description", "task", "params"}
_TASK_KEYS = {
    "name": str,
    "data": str,
    "model": str,
    "epochs": int,
    "val_fraction": float,
    "test_fraction": float,
    "image_size": list,
    "model_args": dict,
    "kind": str,
    "loss": str,
    "metric": str,
    "direction": str,
    "normalize": bool,
    "recipe": dict,
    "train": str,
}
# What a space whose trials run the user's own training function (task.train) may say in [task].
_TRAIN_TASK_KEYS = ("train", "epochs", "metric", "direction")
_REQUIRED_TASK_KEYS = ("model", "epochs")
DEFAULT_TEST_FRACTION = 0.1  # of the user's training data, held out when it has no test split
_NOT_A_KEYWORD = (
    f"not a keyword argument a factory can take (the data gives {' and '.join(factory.DATA_ARGS)})"
)
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
        task: the registered task's name, or the user's ``task.data`` as written.
        model: a built-in family or a ``FILE.py:NAME`` / ``module:NAME`` factory reference.
        epochs, val_fraction: the ``[task]`` table.
        params: the sampled hyperparameters in file order.
        data: the parsed file as plain data; stored on the study to detect a changed space.
        base_dir: the folder that paths in ``[task]`` are relative to (the space file's).
        data_ref: ``task.data``: None for a registered task.
        model_args: fixed keyword arguments for the model factory.
        image_size: (height, width) that folder images are resized to, if given.
        test_fraction: share of the user's training data held out when it has no test split.
        recipe: loop params fixed for the whole study (``[task.recipe]``).
        scoring: the task's kind, loss, metric and direction.
        normalize: ``task.normalize`` (None: by dtype, see `search.tasks.scaling`).
        train: ``task.train``: the user's own training function, which trials call instead of
            the harness's loop (then there is no data, model or recipe here).
    """

    name: str
    source: str
    task: str
    model: str
    epochs: int
    val_fraction: float
    params: tuple[Param, ...]
    data: dict[str, Any]
    base_dir: Path = Path(".")
    data_ref: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION
    recipe: dict[str, Any] = field(default_factory=dict)
    scoring: Scoring = field(default_factory=Scoring)
    normalize: bool | None = None
    train: str | None = None

    @property
    def has_conditions(self) -> bool:
        return any(p.when for p in self.params)

    @property
    def user_data(self) -> bool:
        return self.data_ref is not None

    def extreme_configurations(self) -> list[dict[str, Any]]:
        """Configurations at the ends of every param: all low (first choice), all high (last
        choice), and each other choice of a categorical once; conditions respected. The model
        is checked at each before a study is created."""

        def pick(choose: Callable[[Param], Any]) -> dict[str, Any]:
            sampled: dict[str, Any] = {}
            for param in self.params:
                if param.active(sampled):
                    sampled[param.name] = choose(param)
            return sampled

        configurations = [
            pick(lambda p: extremes(p.distribution)[0]),
            pick(lambda p: extremes(p.distribution)[-1]),
        ]
        for param in self.params:
            if isinstance(param.distribution, optuna.distributions.CategoricalDistribution):
                for choice in param.distribution.choices[1:-1]:
                    configurations.append(
                        pick(
                            lambda p, c=choice, n=param.name: (
                                c if p.name == n else extremes(p.distribution)[0]
                            )
                        )
                    )
        return configurations

    def absolute_task_table(self) -> dict[str, Any]:
        """The ``[task]`` table with its paths made absolute, for a space written elsewhere
        (an export's config.toml) that must still find the data and the model's code."""
        table = dict(self.data["task"])
        if "data" in table and not given.is_marker(table["data"]):
            table["data"] = _absolute(table["data"], self.base_dir)
        model = table["model"]
        if not factory.is_builtin(model) and not given.is_marker(model):
            table["model"] = _absolute(model, self.base_dir)
        for key, builtin in (("loss", scoring.LOSSES), ("metric", scoring.METRICS)):
            if key in table and table[key] not in builtin:
                table[key] = _absolute(table[key], self.base_dir)
        return table

    def hyperparameters(self, params: dict[str, Any]) -> Hyperparameters:
        """The loop's recipe for a trial's params: sampled, else fixed in ``[task.recipe]``,
        else the loop's defaults."""
        return split_params({**self.recipe, **params})[0]

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


SpaceSource = str | Path | dict[str, Any] | None


def load(source: SpaceSource = None, objects: Given = NOTHING) -> Space:
    """Read and validate a space: a file (a path, or a bare name such as ``mnist``), a dict in a
    file's shape, or TOML text. Objects given from Python (``objects``) stand in its ``[task]``
    as markers (`search.given`); paths in a dict or text are relative to the current folder."""
    if isinstance(source, dict):
        data, where, base = copy.deepcopy(source), "space (a dict)", Path.cwd()
    elif isinstance(source, str) and is_text(source):
        where, base = "space (TOML text)", Path.cwd()
        try:
            data = tomllib.loads(source)
        except tomllib.TOMLDecodeError as e:
            raise SpaceError(f"{where}: not valid TOML: {e}") from None
    else:
        path = resolve(None if source is None else str(source))
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise SpaceError(f"{path}: not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SpaceError(f"{path}: cannot read: {e}") from None
        where, base = str(path), path.parent.resolve()
    if objects.items() and isinstance(data.get("task", {}), dict):
        data["task"] = given.mark(data.get("task", {}), objects)
    return from_data(data, name=name_of(source, objects), source=where, base_dir=base)


def is_text(source: str) -> bool:
    """Whether ``--space`` / ``space=`` is a space's TOML text rather than a name or path."""
    return "\n" in source


def name_of(source: SpaceSource, objects: Given = NOTHING) -> str:
    """A space's name, the default study name: a file's stem; for a space given as a dict or
    text (or none, with objects), the training function's or model factory's name, else the
    registered task's."""
    inline = isinstance(source, dict) or (isinstance(source, str) and is_text(source))
    named = objects.train if objects.train is not None else objects.model
    if named is not None and (inline or source is None):
        return given.name_of(named)
    if inline:
        data = source if isinstance(source, dict) else _parsed_or_empty(source)
        task = data.get("task")
        if isinstance(task, dict) and isinstance(task.get("name"), str):
            return task["name"]
        return "space"
    return resolve(None if source is None else str(source)).stem


def _parsed_or_empty(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}  # `load` says what is wrong with it


def from_data(data: dict[str, Any], *, name: str, source: str, base_dir: Path = Path(".")) -> Space:
    """Validate parsed space data (from a file, or as stored on a study, whose file's folder
    ``base_dir`` its paths are relative to)."""

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
    if "train" in task_table:
        return _own_training(data, task_table, name, source, base_dir, fail)
    if ("name" in task_table) == ("data" in task_table):
        raise fail(
            "task",
            "name a registered task (task.name) or your own data (task.data), exactly one of them"
            + (
                f", got both name={task_table['name']!r} and data={task_table['data']!r}"
                if "name" in task_table
                else ""
            ),
        )
    for key in _REQUIRED_TASK_KEYS:
        if key not in task_table:
            raise fail(f"task.{key}", "missing")
    _check_types(task_table, fail)
    model = task_table["model"]
    data_ref = task_table.get("data")
    if data_ref is None:
        try:
            task = tasks.get(task_table["name"])
        except SearchError as e:
            raise fail("task.name", str(e)) from None
        if (
            model not in task.models
            and not references.looks_like_reference(model)
            and not given.is_marker(model)
        ):
            raise fail(
                "task.model",
                f"task {task.name} has no model {model!r}; it has {', '.join(task.models)}, "
                'or name a factory of your own like "models.py:build"',
            )
        task_name = task.name
        for key in ("image_size", "test_fraction"):
            if key in task_table:
                raise fail(
                    f"task.{key}", "only for your own data (task.data), not a registered task"
                )
        if task_table.get("kind", "classification") != "classification":
            raise fail(
                "task.kind",
                f"task {task.name} is a classification task, got {task_table['kind']!r}",
            )
    else:
        if not data_ref.strip():
            raise fail("task.data", "must name a folder, a .npz/.pt file or a FILE.py:NAME loader")
        task_name = data_ref
    if (
        not factory.is_builtin(model)
        and not references.looks_like_reference(model)
        and not given.is_marker(model)
    ):
        raise fail(
            "task.model",
            f"{model!r} is neither a model family ({', '.join(models.FAMILIES)}) nor a "
            'reference to your own factory like "models.py:build" or "pkg.module:build"',
        )
    epochs = task_table["epochs"]
    if epochs < 1:
        raise fail("task.epochs", f"must be at least 1, got {epochs}")
    val_fraction = float(task_table.get("val_fraction", 0.1))
    if not 0 < val_fraction < 1:
        raise fail("task.val_fraction", f"must be between 0 and 1, got {val_fraction}")
    test_fraction = float(task_table.get("test_fraction", DEFAULT_TEST_FRACTION))
    if not 0 < test_fraction < 1:
        raise fail("task.test_fraction", f"must be between 0 and 1, got {test_fraction}")
    image_size = _image_size(task_table, fail)
    model_args = task_table.get("model_args", {})
    for arg in model_args:
        if arg in LOOP_PARAMS or arg in NEAR_MISSES:
            raise fail(
                f"task.model_args.{arg}",
                f"the training loop's, not the model's: fix it in [task.recipe] "
                f"({closest_loop_param(arg) or arg})",
            )
        if not arg.isidentifier() or arg in factory.DATA_ARGS:
            raise fail(
                f"task.model_args.{arg}",
                _NOT_A_KEYWORD,
            )
    task_scoring = scoring.from_space(
        task_table.get("kind"),
        task_table.get("loss"),
        task_table.get("metric"),
        task_table.get("direction"),
        base_dir,
        fail,
    )
    recipe = _recipe(task_table.get("recipe", {}), task_scoring, fail)

    def domain_of(pname: str, key: str) -> Domain:
        domain = _domain(pname, model, model_args, lambda p: fail(key, p))
        if pname in recipe:
            raise fail(key, "is also fixed in [task.recipe]; sample it or fix it, not both")
        if pname == "label_smoothing" and task_scoring.kind != "classification":
            raise fail(key, "label smoothing is for classification, and this is a regression")
        return domain

    params = _params(data, fail, domain_of)
    for param in params:
        if param.name == "depth" and model in models.MAX_DEPTH:
            top = max(extremes(param.distribution))
            if top > models.MAX_DEPTH[model]:
                raise fail(
                    "params.depth",
                    f"model {model} allows depth up to {models.MAX_DEPTH[model]}, got {top}",
                )

    return Space(
        name=name,
        source=source,
        task=task_name,
        model=model,
        epochs=epochs,
        val_fraction=val_fraction,
        params=params,
        data=data,
        base_dir=base_dir,
        data_ref=data_ref,
        model_args=dict(model_args),
        image_size=image_size,
        test_fraction=test_fraction,
        recipe=recipe,
        scoring=task_scoring,
        normalize=task_table.get("normalize"),
    )


def _own_training(
    data: dict[str, Any],
    task_table: dict[str, Any],
    name: str,
    source: str,
    base_dir: Path,
    fail: Callable[[str, str], SpaceError],
) -> Space:
    """A space whose trials call the user's training function: ``[task]`` names the function,
    the epochs (its pruners' full budget, steps 1..epochs of its reports), the metric's name and
    its direction; every param goes to the function as it is sampled."""
    for key in task_table:
        if key not in _TRAIN_TASK_KEYS:
            raise fail(
                f"task.{key}",
                "not for a training function of your own (task.train), which trains however it "
                f"likes; [task] takes {', '.join(_TRAIN_TASK_KEYS)}",
            )
    _check_types(task_table, fail)
    train = task_table["train"]
    if not given.is_marker(train) and not references.looks_like_reference(train):
        raise fail(
            "task.train",
            f'{train!r} is not a reference to your function like "train.py:train" or '
            '"pkg.module:train"',
        )
    if "epochs" not in task_table:
        raise fail(
            "task.epochs",
            "missing: the most epochs (or steps) your function reports; the pruners' full budget",
        )
    epochs = task_table["epochs"]
    if epochs < 1:
        raise fail("task.epochs", f"must be at least 1, got {epochs}")
    metric = task_table.get("metric", "value")
    if not metric.isidentifier():
        raise fail("task.metric", f"must be a name (letters, digits, _), got {metric!r}")
    direction = task_table.get("direction")
    if direction not in scoring.DIRECTIONS:
        raise fail(
            "task.direction",
            (
                f"must be maximize or minimize, got {direction!r}"
                if direction is not None
                else "missing: say whether what your function returns is better higher "
                '("maximize") or lower ("minimize")'
            ),
        )
    params = _params(data, fail, lambda pname, key: FACTORY_PARAM)
    return Space(
        name=name,
        source=source,
        task=train,
        model="",
        epochs=epochs,
        val_fraction=0.0,
        params=params,
        data=data,
        base_dir=base_dir,
        scoring=scoring.own_training(metric, direction),
        train=train,
    )


def _check_types(task_table: dict[str, Any], fail: Callable[[str, str], SpaceError]) -> None:
    """Each ``[task]`` key's value is of its type (`_TASK_KEYS`)."""
    for key, kind in _TASK_KEYS.items():
        if key in task_table and not _is(task_table[key], kind):
            raise fail(f"task.{key}", f"must be {_KIND_WORD[kind]}, got {task_table[key]!r}")


def _params(
    data: dict[str, Any],
    fail: Callable[[str, str], SpaceError],
    domain_of: Callable[[str, str], Domain],
) -> tuple[Param, ...]:
    """The ``[params]`` tables in file order, each checked against ``domain_of(name, key)``."""
    params_table = _table(data, "params", fail)
    if not params_table:
        raise fail("params", "a space must sample at least one param")
    params: list[Param] = []
    for pname, spec in params_table.items():
        key = f"params.{pname}"
        domain = domain_of(pname, key)
        if not isinstance(spec, dict):
            raise fail(key, f"must be a table, got {spec!r}")
        distribution = _distribution(spec, domain, lambda p, k=key: fail(k, p))
        when = _condition(spec.get("when"), params, lambda p, k=key: fail(f"{k}.when", p))
        params.append(Param(pname, distribution, when))
    return tuple(params)


def _recipe(
    table: dict[str, Any], task_scoring: Scoring, fail: Callable[[str, str], SpaceError]
) -> dict[str, Any]:
    """``[task.recipe]``: loop params fixed for the study, each checked as a sampled one is."""
    for name, value in table.items():
        key = f"task.recipe.{name}"
        if name not in LOOP_PARAMS:
            meant = closest_loop_param(name)
            hint = f"did you mean {meant}? " if meant and meant in LOOP_PARAMS else ""
            raise fail(
                key, f"not a param of the training loop; {hint}it takes {', '.join(LOOP_PARAMS)}"
            )
        domain = HYPERPARAMETERS[name]
        if not _is(value, domain.kind) or not domain.ok(value):
            raise fail(key, f"must be {domain.says}, got {value!r}")
        if name == "label_smoothing" and task_scoring.kind != "classification":
            raise fail(key, "label smoothing is for classification, and this is a regression")
    return dict(table)


def _domain(
    name: str, model: str, model_args: dict[str, Any], fail: Callable[[str], SpaceError]
) -> Domain:
    """What values param ``name`` may take: the loop's own domains, or anything a factory takes."""
    if name in HYPERPARAMETERS:
        return HYPERPARAMETERS[name]
    meant = closest_loop_param(name)
    if name == "epochs":
        raise fail(
            "epochs is the study's, not a param: set task.epochs (or search run --epochs); "
            "pruning decides how many each trial runs"
        )
    if name in NEAR_MISSES:
        raise fail(f"not a param of the training loop; did you mean {meant}?")
    if factory.is_builtin(model):
        hint = f"did you mean {meant}? " if meant else ""
        raise fail(
            f"unknown hyperparameter; {hint}the training loop takes {', '.join(LOOP_PARAMS)} and "
            f'model {model} takes depth (a factory of your own, task.model = "models.py:build", '
            "takes any param)"
        )
    if not name.isidentifier() or name in factory.DATA_ARGS:
        raise fail(_NOT_A_KEYWORD)
    if name in model_args:
        raise fail("is also fixed in [task.model_args]; sample it or fix it, not both")
    return FACTORY_PARAM


def _image_size(
    table: dict[str, Any], fail: Callable[[str, str], SpaceError]
) -> tuple[int, int] | None:
    if "image_size" not in table:
        return None
    size = table["image_size"]
    if len(size) != 2 or not all(_is(v, int) and v >= 1 for v in size):
        raise fail("task.image_size", f"must be [height, width] in pixels, got {size!r}")
    return int(size[0]), int(size[1])


def _absolute(text: str, base: Path) -> str:
    """A path, or the file part of a ``FILE.py:NAME`` reference, made absolute against ``base``."""
    if references.looks_like_reference(text):
        reference = references.parse(text)
        if not reference.is_file:
            return text  # a module: found on the import path, not relative to anything
        return f"{references.file_of(reference, base)}:{reference.name}"
    return str((base / Path(text).expanduser()).resolve())


_KIND_WORD = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}
_KIND_PLURAL = {
    bool: "true or false",
    str: "strings",
    int: "integers",
    float: "numbers",
    object: "strings, numbers or booleans",
}


def _is(value: Any, kind: type) -> bool:
    """TOML type check; bools are not numbers, and integers are numbers."""
    if kind is object:  # a factory's param: any scalar Optuna can store
        return isinstance(value, bool | int | float | str)
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
    if domain.kind in (str, bool):
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
