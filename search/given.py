"""What a Python caller hands over as objects instead of files: a model factory, data, a training
function (`search.run(model=..., data=..., train=...)`).

Each object stands in the space data as a marker, ``"<python>:NAME"`` (``task.model``,
``task.data``, ``task.train``), so a study records that its code or data came from Python, and the
stored space tells a later command what it needs: the command line, which cannot have the objects,
says so in one line and how to continue from Python. A function's fingerprint is its source where
it can be read (a notebook cell's too: IPython keeps cell sources where `inspect` finds them); data
given as objects is fingerprinted by the bytes of its tensors (`search.tasks.user_data`). Objects
defined in ``__main__`` or a notebook cell cannot be imported by name in another process, so
callables cross into spawned worker processes by value, with cloudpickle.

This module imports no torch and no Optuna.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from typing import Any

import cloudpickle

from search.errors import SettingsError

MARKER = "<python>"
# The keywords that give objects; each stands for the [task] key of its name (task.model ...).
KEYWORDS = ("model", "data", "train")


@dataclass(frozen=True)
class Given:
    """The objects a `search.run` / `search.export` call was given (None: not given)."""

    model: Callable[..., Any] | None = None
    data: Any = None
    train: Callable[..., Any] | None = None

    def items(self) -> list[tuple[str, Any]]:
        pairs = (("model", self.model), ("data", self.data), ("train", self.train))
        return [(keyword, value) for keyword, value in pairs if value is not None]


NOTHING = Given()


def marker(name: str) -> str:
    """The space value that stands for an object named ``name``."""
    return f"{MARKER}:{name}"


def name_of_marker(value: str) -> str:
    return value.removeprefix(MARKER + ":")


def is_marker(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(MARKER + ":")


def name_of(value: Any) -> str:
    """How an object is called in messages and markers: a function's or class's name."""
    for name in (getattr(value, "__qualname__", None), getattr(value, "__name__", None)):
        if isinstance(name, str) and "<" not in name:
            return name
    if getattr(value, "__name__", None) == "<lambda>":
        return "lambda"
    return type(value).__name__


def mark(task: dict[str, Any], given: Given) -> dict[str, Any]:
    """A space's ``[task]`` table with a marker for each object given (and for data given as a
    path, that path).

    Raises:
        SettingsError: an object is given and the space names the same thing, or model= and
            train= are both given, or an object is not of the form its keyword takes.
    """
    if given.model is not None and given.train is not None:
        raise SettingsError(
            "search.run: model= and train= together; give model= (and data=) for the harness's "
            "training loop, or train= for a training function of your own"
        )
    table = dict(task)
    for keyword, value in given.items():
        if keyword in ("model", "train") and not callable(value):
            raise SettingsError(
                f"search.run: {keyword}= must be a callable (a function or class), got "
                f"{type(value).__name__} {_short(value)}"
            )
        if keyword == "data" and isinstance(value, str | PathLike):
            new = str(value)  # one of the file forms, relative to the current folder
        else:
            new = marker("data" if keyword == "data" else name_of(value))
        if keyword in table and table[keyword] != new:
            raise SettingsError(
                f"search.run: {keyword}= given, and the space names task.{keyword} = "
                f"{table[keyword]!r}; give one of them"
            )
        if keyword == "data" and "name" in table:
            raise SettingsError(
                f"search.run: data= given, and the space names the registered task "
                f"task.name = {table['name']!r}; give one of them"
            )
        table[keyword] = new
    return table


def missing(task: dict[str, Any], given: Given) -> list[str]:
    """The keywords whose objects a stored space stands for and ``given`` lacks."""
    return [k for k in KEYWORDS if is_marker(task.get(k)) and getattr(given, k) is None]


def call_arguments(task: dict[str, Any]) -> str:
    """The keyword arguments that give a stored space's objects again, as a call would:
    ``model=build, data=(train, test)``."""
    shown = []
    for keyword in KEYWORDS:
        value = task.get(keyword)
        if is_marker(value):
            shown.append(
                f"{keyword}={'(train, test)' if keyword == 'data' else name_of_marker(value)}"
            )
    return ", ".join(shown)


def fingerprint(reference: str, value: Callable[..., Any]) -> dict[str, Any]:
    """What identifies a function or class given as an object: its source and that text's
    SHA-256 (None where its source cannot be read: a built-in, a lambda typed at a prompt)."""
    source = source_of(value)
    return {
        "reference": reference,
        "python": True,
        "name": name_of(value),
        "module": getattr(value, "__module__", None),
        "source": source,
        "sha256": None if source is None else hashlib.sha256(source.encode()).hexdigest(),
    }


def source_of(value: Any) -> str | None:
    """A function's or class's source text, followed by the sources of the functions and classes
    of its own module that it uses by name (a notebook's model class behind its factory), so that
    editing any of them reads as other code. None where a source cannot be read."""
    parts: list[str] = []
    seen: set[int] = set()

    def visit(item: Any) -> bool:
        if id(item) in seen:
            return True
        seen.add(id(item))
        text = _own_source(item)
        if text is None:
            return False
        parts.append(text)
        module = getattr(item, "__module__", None)
        for used in _used_globals(item):
            if getattr(used, "__module__", None) == module:
                visit(used)  # one that cannot be read is left out: the rest still tells
        return True

    return "\n".join(parts) if visit(value) else None


def _own_source(value: Any) -> str | None:
    """The source of one function or class; a class defined in a notebook (whose module has no
    file) as the sources of its methods."""
    try:
        return inspect.getsource(value)
    except (OSError, TypeError):
        pass
    if isinstance(value, type):
        parts = []
        for member in vars(value).values():
            if inspect.isfunction(member):
                try:
                    parts.append(inspect.getsource(member))
                except (OSError, TypeError):
                    return None
        if parts:
            return f"class {value.__qualname__}:\n" + "".join(parts)
    return None


def _used_globals(value: Any) -> list[Any]:
    """The functions and classes a function (or a class's methods and bases) names globally."""
    functions = [value] if inspect.isfunction(value) else []
    found: list[Any] = []
    if isinstance(value, type):
        functions = [m for m in vars(value).values() if inspect.isfunction(m)]
        found += [base for base in value.__bases__ if base is not object]
    for function in functions:
        names: list[str] = []
        codes = [function.__code__]
        while codes:  # nested functions, lambdas and comprehensions have code of their own
            code = codes.pop()
            names += code.co_names
            codes += [c for c in code.co_consts if inspect.iscode(c)]
        scope = function.__globals__
        for name in dict.fromkeys(names):
            used = scope.get(name)
            if inspect.isfunction(used) or inspect.isclass(used):
                found.append(used)
    return found


def dumps(value: Any) -> bytes:
    """A callable as bytes another process loads, by value where it cannot be imported there."""
    return cloudpickle.dumps(value)


def loads(blob: bytes) -> Any:
    return cloudpickle.loads(blob)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
