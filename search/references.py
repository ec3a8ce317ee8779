"""References to the user's own code: ``FILE.py:NAME`` or ``pkg.module:NAME`` → a callable.

``FILE.py:NAME`` is a path relative to the space file's folder (as NNI's config paths are); the
file's folder goes on ``sys.path`` so that it can import its neighbours. ``pkg.module:NAME`` is
imported from the current directory or the installed packages, the ``module:attr`` convention of
uvicorn and entry points. Every problem is a `TaskError` whose message says what is wrong in words
a user can act on; the caller adds the space file and key. A failure inside the user's module is
shown by its exception's first line and the file and line where it happened.

This module imports no Optuna and no torch: it only finds and fingerprints code.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from search.errors import TaskError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colours some libraries put in their messages
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Reference:
    """A parsed ``FILE.py:NAME`` or ``module:NAME``."""

    text: str  # as written
    target: str  # the file path or dotted module name
    name: str  # the attribute

    @property
    def is_file(self) -> bool:
        return self.target.endswith(".py")


def looks_like_reference(text: str) -> bool:
    """Whether ``text`` is meant as ``FILE.py:NAME`` / ``module:NAME`` rather than a path."""
    target, colon, name = text.rpartition(":")
    return (
        bool(colon)
        and bool(_NAME.fullmatch(name))
        and (target.endswith(".py") or bool(_MODULE.fullmatch(target)))
    )


def parse(text: str) -> Reference:
    target, colon, name = text.rpartition(":")
    if not colon or not target or not _NAME.fullmatch(name):
        raise TaskError(
            f"{text!r} is not a reference; write FILE.py:NAME (beside the space file) or "
            "package.module:NAME"
        )
    if not target.endswith(".py") and not _MODULE.fullmatch(target):
        raise TaskError(f"{text!r}: {target!r} is neither a .py file nor a dotted module name")
    if target in ("__main__", "__mp_main__"):
        raise TaskError(
            f"{text!r} names an object of the running program, which no other command or process "
            f"can import; hand {name} to search.run itself (model={name}, data={name}() or "
            f"train={name})"
        )
    return Reference(text, target, name)


def file_of(reference: Reference, base: Path) -> Path:
    """The absolute path of a ``FILE.py`` reference, relative to ``base``."""
    return (base / Path(reference.target).expanduser()).resolve()


def load(text: str, base: Path) -> Callable[..., Any]:
    """The callable ``text`` names; ``FILE.py`` paths are relative to ``base``.

    Raises:
        TaskError: the file or module is missing or fails to import, the name is not in it, or
            it is not callable.
    """
    reference = parse(text)
    module = _import(reference, base)
    where = reference.target
    if not hasattr(module, reference.name):
        callables = sorted(
            name
            for name, value in vars(module).items()
            if callable(value) and not name.startswith("_") and _defined_in(value, module)
        )
        close = difflib.get_close_matches(reference.name, callables, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(callables) if callables else "none"
        raise TaskError(f"{where} has no {reference.name!r}{hint} (its callables: {listing})")
    value = getattr(module, reference.name)
    if not callable(value):
        raise TaskError(
            f"{where}: {reference.name!r} is {_a(type(value).__name__)}, not a callable"
        )
    return value


def fingerprint(text: str, base: Path) -> dict[str, Any]:
    """What identifies the code behind a reference: its source file and that file's SHA-256."""
    reference = parse(text)
    if reference.is_file:
        path = file_of(reference, base)
    else:
        source = inspect.getsourcefile(_import(reference, base))
        if source is None:
            return {"reference": text, "file": None, "sha256": None}
        path = Path(source).resolve()
    return {"reference": text, "file": str(path), "sha256": _sha256(path)}


def _import(reference: Reference, base: Path) -> ModuleType:
    if reference.is_file:
        path = file_of(reference, base)
        if not path.is_file():
            raise TaskError(f"{reference.target}: no such file (looked for {path})")
        return _import_file(path)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # `pkg.mod` from the current directory, as uvicorn does
    try:
        return importlib.import_module(reference.target)
    except ModuleNotFoundError as e:
        if e.name is not None and reference.target.startswith(e.name):
            raise TaskError(
                f"no module named {e.name!r} (imported from the current directory {cwd} or the "
                "installed packages)"
            ) from None
        raise TaskError(_failure(reference.target, e)) from None
    except Exception as e:  # the user's module raised while importing: say what and where
        raise TaskError(_failure(reference.target, e)) from None


_FILES: dict[Path, ModuleType] = {}


def _import_file(path: Path) -> ModuleType:
    """Import a .py file once per process under a private name; its folder joins ``sys.path``."""
    if path in _FILES:
        return _FILES[path]
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so that models.py can import layers.py beside it
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"_search_user_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise TaskError(_failure(path.name, e)) from None
    _FILES[path] = module
    return module


def failure_line(error: BaseException) -> str:
    """An exception's first line and the place (file:line) in the user's code where it arose."""
    if isinstance(error, SyntaxError) and error.filename:
        where = f"{Path(error.filename).name}, line {error.lineno}"
        return f"SyntaxError: {error.msg} ({where})"
    text = _ANSI.sub("", str(error)).strip().splitlines()
    line = f"{type(error).__name__}: {text[0].strip()}" if text else type(error).__name__
    # The innermost frame outside this package and the libraries: where the user's code failed.
    own = [f for f in traceback.extract_tb(error.__traceback__) if not is_library(f.filename)]
    if own:
        line += f" ({Path(own[-1].filename).name}, line {own[-1].lineno})"
    return line


def _failure(what: str, error: BaseException) -> str:
    return f"importing {what} failed: {failure_line(error)}"


_LIBRARY_ROOTS = tuple(
    str(Path(p).resolve())
    for p in {
        Path(__file__).resolve().parent,
        Path(os.__file__).resolve().parent,
        *(Path(p) for p in sys.path if "site-packages" in p or "dist-packages" in p),
    }
)


def is_library(filename: str) -> bool:
    """Whether ``filename`` is part of this package, the standard library or an installed one."""
    if filename.startswith("<"):
        return True  # importlib's frozen bootstrap
    return str(Path(filename).resolve()).startswith(_LIBRARY_ROOTS)


def _defined_in(value: Any, module: ModuleType) -> bool:
    """Whether a module attribute was defined there rather than imported into it."""
    return getattr(value, "__module__", module.__name__) == module.__name__


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
