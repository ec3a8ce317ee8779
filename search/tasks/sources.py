"""The user's tensor files and loaders → raw parts: inputs and targets per split, as they came.

A ``.npz`` or ``.pt`` file follows Keras' ``mnist.npz`` convention (``x_train``, ``y_train``,
``x_test``, ``y_test``, optional ``x_val``, ``y_val``). Data with several inputs (a table's numbers
and its category codes) holds ``x_train_NAME`` for each input NAME (``np.savez(f, x_train_num=...,
x_train_cat=...)``), or, in a ``.pt`` file, ``x_train`` as a dict or tuple of tensors; the model
takes them as positional arguments in that order. A loader returns ``(train, test)``, each an
``(x, y)`` pair (``x`` an array or a tuple or dict of arrays) or a map-style ``Dataset`` of such
items (PIL images too); a ``Dataset``'s ``classes`` attribute names its classes. Targets may be
numbers or strings. Nothing is checked here beyond the shape of the containers:
`search.tasks.checks` checks the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search import references
from search.errors import TaskError, first_line

SPLITS = ("train", "val", "test")


@dataclass
class Part:
    """One split as read: its inputs (one, or several named ones) and its targets (a tensor, or
    a NumPy array of strings)."""

    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor | np.ndarray


@dataclass
class Parts:
    """Every split as read, before it is checked."""

    train: Part
    val: Part | None
    test: Part | None
    names: tuple[str, ...] | None = None  # the inputs' names, where the data has several
    classes: tuple[str, ...] | None = None  # a folder's or Dataset's class names


def from_tensor_file(path: Path, text: str) -> Parts:
    """A ``.npz`` or ``.pt`` file (``text`` as the space names it)."""
    arrays = read_arrays(path, text)
    keys = ", ".join(sorted(map(str, arrays))) or "none"
    names: tuple[str, ...] | None = None

    def inputs_of(split: str) -> tuple[tuple[torch.Tensor, ...], tuple[str, ...] | None] | None:
        key = f"x_{split}"
        if key in arrays:
            value = arrays[key]
            if isinstance(value, dict | tuple | list):  # a .pt file's several inputs
                return several(value, f"{text}: {key}")
            return (tensor(value, f"{text}: {key}"),), None
        prefix = f"{key}_"
        named = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        if not named:
            return None
        return tuple(tensor(v, f"{text}: {prefix}{n}") for n, v in named.items()), tuple(named)

    def part(split: str, required: bool) -> Part | None:
        nonlocal names
        found = inputs_of(split)
        y_key = f"y_{split}"
        if found is None and y_key not in arrays and not required:
            return None
        if found is None:
            raise TaskError(f"{text} has no x_{split} (its keys: {keys})")
        if y_key not in arrays:
            raise TaskError(f"{text} has no {y_key} (its keys: {keys})")
        inputs, split_names = found
        if split == "train":
            names = split_names
        elif split_names != names:
            raise TaskError(
                f"{text}: x_{split} has inputs {', '.join(split_names or ['x'])} but x_train has "
                f"{', '.join(names or ['x'])}"
            )
        return Part(inputs, targets(arrays[y_key], f"{text}: {y_key}"))

    train = part("train", True)
    return Parts(train, part("val", False), part("test", False), names)


def read_arrays(path: Path, text: str) -> dict[str, Any]:
    """The arrays a ``.npz`` file holds, or the dict a ``.pt`` file holds (read with
    ``weights_only=True``, so that reading it runs no code)."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays: dict[str, Any] = {k: archive[k] for k in archive.files}
        except (OSError, ValueError) as e:
            raise TaskError(f"{text}: not a readable .npz file ({first_line(e)})") from None
    else:
        try:
            arrays = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:  # unpickling errors come in many types
            raise TaskError(
                f"{text}: cannot be read with torch.load(weights_only=True): {first_line(e)}; "
                "save a dict of tensors"
            ) from None
        if not isinstance(arrays, dict):
            raise TaskError(
                f"{text}: holds {type(arrays).__name__!r}; save a dict with x_train, y_train, "
                "x_test, y_test (optional x_val, y_val)"
            )
    return arrays


def from_loader(text: str, base: Path) -> Parts:
    """What the loader ``text`` returns, called once with no arguments."""
    load = references.load(text, base)
    try:
        result = load()
    except Exception as e:
        raise TaskError(f"{text} raised {references.failure_line(e)}") from None
    return from_pair(result, text, f"{text} returned", "a loader returns")


def from_pair(result: Any, where: str, got: str = "data= is", takes: str = "give") -> Parts:
    """A ``(train, test)`` pair as a loader returns it (or as given to `search.run`'s data=);
    ``got`` and ``takes`` word the message that says it is not one."""
    if not isinstance(result, tuple | list) or len(result) != 2:
        size = f" of {len(result)}" if isinstance(result, tuple | list) else ""
        raise TaskError(
            f"{got} {type(result).__name__!r}{size}; {takes} (train, test), each an (x, y) pair of "
            "tensors or arrays, or a Dataset of (x, y) items, test possibly None"
        )
    train, test = result
    if train is None:
        raise TaskError(f"{where}: no training data (train is None)")
    if _is_array(train):
        raise TaskError(
            f"{where} looks like one (x, y) pair; {takes} (train, test): ((x_train, y_train), "
            "(x_test, y_test)), or (train, None) to hold out a share of train as the test split"
        )
    (train_part, names), classes = examples(train, f"{where}: train"), _classes(train)
    test_part = None
    if test is not None:
        test_part, test_names = examples(test, f"{where}: test")
        if test_names != names:
            raise TaskError(f"{where}: test inputs are {test_names}, training inputs {names}")
    return Parts(train_part, None, test_part, names, classes)


def _classes(value: Any) -> tuple[str, ...] | None:
    """A Dataset's ``classes`` (torchvision's convention), if it names them."""
    classes = getattr(value, "classes", None)
    if isinstance(classes, list | tuple) and classes and all(isinstance(c, str) for c in classes):
        return tuple(classes)
    return None


def examples(value: Any, where: str) -> tuple[Part, tuple[str, ...] | None]:
    """An (x, y) pair, or a map-style Dataset of (x, y) items, as tensors."""
    if isinstance(value, tuple | list) and len(value) == 2 and _is_inputs(value[0]):
        inputs, names = _inputs(value[0], f"{where} x")
        return Part(inputs, targets(value[1], f"{where} y")), names
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
        return _dataset(value, where)
    raise TaskError(
        f"{where} is {type(value).__name__!r}; give an (x, y) pair of tensors or NumPy arrays, "
        "or a map-style Dataset of (x, y) items"
    )


def _dataset(value: Any, where: str) -> tuple[Part, tuple[str, ...] | None]:
    columns: list[list[torch.Tensor]] | None = None
    names: tuple[str, ...] | None = None
    ys: list[Any] = []
    for i in range(len(value)):
        item = value[i]
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise TaskError(f"{where}: item {i} is {type(item).__name__!r}, not an (x, y) pair")
        inputs, item_names = _inputs(item[0], f"{where}: item {i}'s x")
        if columns is None:
            columns, names = [[] for _ in inputs], item_names
        elif len(inputs) != len(columns) or item_names != names:
            raise TaskError(f"{where}: item {i} has other inputs than item 0")
        for column, x in zip(columns, inputs, strict=True):
            column.append(x)
        ys.append(item[1])
    if columns is None:
        raise TaskError(f"{where}: the Dataset is empty")
    stacked = []
    for column in columns:
        shapes = {tuple(x.shape) for x in column}
        if len(shapes) > 1:
            raise TaskError(f"{where}: items have inputs of different shapes {sorted(shapes)[:2]}")
        stacked.append(torch.stack(column))
    if all(isinstance(y, str) for y in ys):
        return Part(tuple(stacked), np.array(ys)), names
    labels = [targets(y, f"{where}: item {i}'s y") for i, y in enumerate(ys)]
    if any(isinstance(y, np.ndarray) for y in labels):
        raise TaskError(f"{where}: some items' labels are strings and some are not")
    shapes = {tuple(y.shape) for y in labels}
    if len(shapes) > 1:
        raise TaskError(f"{where}: items have labels of different shapes {sorted(shapes)[:2]}")
    return Part(tuple(stacked), torch.stack(labels)), names


def _is_inputs(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(value) and all(map(_is_array, value.values()))
    if isinstance(value, tuple | list):
        return bool(value) and all(map(_is_array, value))
    return _is_array(value)


def _inputs(value: Any, where: str) -> tuple[tuple[torch.Tensor, ...], tuple[str, ...] | None]:
    """One input, or several (a tuple or dict of them)."""
    if isinstance(value, dict | tuple | list) and not _is_array(value):
        return several(value, where)
    return (tensor(value, where),), None


def several(value: Any, where: str) -> tuple[tuple[torch.Tensor, ...], tuple[str, ...]]:
    """Several inputs: a dict of them (named by its keys) or a tuple (``input0``, ...)."""
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    if not items:
        raise TaskError(f"{where}: no inputs")
    names = tuple(str(k) if isinstance(value, dict) else f"input{k}" for k, _ in items)
    return tuple(
        tensor(v, f"{where}[{n!r}]") for (_, v), n in zip(items, names, strict=True)
    ), names


def _is_array(value: Any) -> bool:
    """A tensor, an array, or what NumPy reads as one (a pandas DataFrame or Series)."""
    return isinstance(value, torch.Tensor | np.ndarray) or (
        hasattr(value, "__array__") and not isinstance(value, str | bytes)
    )


def tensor(value: Any, where: str) -> torch.Tensor:
    """An input as a CPU tensor: a tensor, a NumPy array, a PIL image or nested numbers."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if hasattr(value, "mode") and hasattr(
        value, "getdata"
    ):  # a PIL image, as torchvision hands out
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(value)
    try:
        array = np.asarray(value)
        if array.dtype == object or array.dtype.kind in "USV":
            raise TypeError(array.dtype)
        if array.ndim == 0:  # one label of a Dataset's item (ascontiguousarray would make it 1-D)
            return torch.from_numpy(array.reshape(()).copy())
        return torch.from_numpy(np.ascontiguousarray(array))
    except (TypeError, ValueError):
        raise TaskError(
            f"{where} is {_described(value)}, not a tensor or array of numbers"
        ) from None


def targets(value: Any, where: str) -> torch.Tensor | np.ndarray:
    """Targets as a CPU tensor, or as a NumPy array of strings (class names to be mapped)."""
    if isinstance(value, str):
        return np.array(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    array = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if array.dtype.kind in "US":
        return array.astype(str)
    if array.dtype == object:
        flat = array.ravel().tolist()
        if flat and all(isinstance(v, str) for v in flat):
            return array.astype(str)
        raise TaskError(
            f"{where} holds {_described(flat[0]) if flat else 'nothing'}, not numbers or strings"
        )
    return tensor(array, where)


def _described(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype}"
    noun = type(value).__name__
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun!r}"
