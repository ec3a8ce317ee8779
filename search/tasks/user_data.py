"""The user's own data → splits, decoded once and cached: an image folder, a tensor file, a loader.

``task.data`` names one of:

- a folder in torchvision's ``ImageFolder`` layout, optionally split into ``train/``, ``val/`` and
  ``test/`` subfolders (`search.tasks.image_folder`);
- a ``.npz`` file in the convention of Keras' ``mnist.npz`` (``x_train``, ``y_train``, ``x_test``,
  ``y_test``, optional ``x_val``, ``y_val``) or a ``.pt`` file holding a dict with those keys,
  read with ``weights_only=True``;
- a loader ``FILE.py:NAME`` / ``module:NAME``, called with no arguments, returning
  ``(train, test)``: each an ``(x, y)`` pair of tensors or NumPy arrays, or a map-style
  ``Dataset`` of ``(x, y)`` items; ``test`` may be None.

Inputs N×C×H×W are images, N×H×W uint8 images get a channel, N×F are features and other 3-D
inputs N×C×L sequences. Labels are integers 0..K-1. Without a test split of its own, a fixed
seeded share (``test_fraction``, seed 0, the same for every study) is held out for `search export`.

The decoded splits go into one file under ``studies/cache/``: one uint8 (or float32) tensor of all
inputs, its labels and the split boundaries, read back memory-mapped. A folder's or tensor file's
entry is named by a hash of its listing (relative names, sizes, modification times) and the
settings that shape it, so a study's 100 trials and every worker process read the decoded tensors
instead of the images; a loader is called once per command and its entry is named by the content
it returned. Entries are written to a temporary file and renamed into place, so two processes
filling the cache at once both end with a whole file. This module imports no Optuna.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search import references
from search.errors import TaskError, first_line
from search.tasks import image_folder
from search.tasks.registry import Split

CACHE_VERSION = 1
TENSOR_SUFFIXES = (".npz", ".pt")


@dataclass(frozen=True)
class UserData:
    """The user's data as the harness trains on it (tensors memory-mapped from the cache).

    Attributes:
        train: the training split (the study carves its validation split from it unless
            ``val`` is given).
        val: the data's own validation split, if it has one.
        test: its test split, or the held-out share.
        classes: class names (a folder's subfolders; ``0``..``K-1`` otherwise).
        fingerprint: what a study records to tell later that its data changed.
        cache: the cache entry the tensors are read from.
    """

    train: Split
    val: Split | None
    test: Split
    classes: tuple[str, ...]
    fingerprint: dict[str, Any]
    cache: Path

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read(
    text: str,
    base: Path,
    *,
    image_size: tuple[int, int] | None,
    test_fraction: float,
    cache_dir: Path,
) -> UserData:
    """The data ``text`` names (relative to ``base``), from the cache when it holds it.

    Raises:
        TaskError: the data is missing or malformed; the message says which file and why.
    """
    is_loader = references.looks_like_reference(text) and not text.endswith(TENSOR_SUFFIXES)
    if image_size is not None and (is_loader or text.endswith(TENSOR_SUFFIXES)):
        raise TaskError(
            f"{text}: task.image_size resizes the images of a folder; a tensor file or loader "
            "hands over its inputs as they are"
        )
    if is_loader:
        parts = _from_loader(text, base)
        return _store(parts, text, "loader", text, test_fraction, cache_dir, key=None)
    location = (base / Path(text).expanduser()).resolve()
    if not location.exists():
        raise TaskError(f"{text}: no such folder or file (looked for {location})")
    if location.is_dir():
        kind = "folder"
    elif location.suffix in TENSOR_SUFFIXES:
        kind = "tensors"
    else:
        raise TaskError(
            f"{text}: not a folder of images, a .npz or .pt file, or a FILE.py:NAME loader"
        )
    key = _listing_key(kind, location, image_size, test_fraction)
    entry = cache_dir / f"{kind}-{key}.pt"
    if entry.is_file():
        try:
            return open_cached(entry)
        except TaskError:
            pass  # an unreadable entry (a disk that filled up): decode again and replace it
    if kind == "folder":
        parts = _Parts(*image_folder.read(location, text, image_size))
    else:
        parts = _from_tensor_file(location, text)
    return _store(parts, text, kind, str(location), test_fraction, cache_dir, key=key)


def open_cached(entry: Path) -> UserData:
    """A cache entry, its tensors memory-mapped (read only as training touches them)."""
    try:
        stored = torch.load(entry, mmap=True, weights_only=True, map_location="cpu")
        if stored.get("version") != CACHE_VERSION:
            raise ValueError(f"cache format {stored.get('version')}")
        x, y = stored["x"], stored["y"]
        n_train, n_val, n_test = stored["bounds"]
    except (OSError, RuntimeError, ValueError, KeyError, EOFError) as e:
        raise TaskError(
            f"data cache {entry}: unreadable ({e}); delete it to decode again"
        ) from None
    train = Split(x[:n_train], y[:n_train])
    val = Split(x[n_train : n_train + n_val], y[n_train : n_train + n_val]) if n_val else None
    test = Split(x[n_train + n_val :], y[n_train + n_val :])
    return UserData(train, val, test, tuple(stored["classes"]), stored["fingerprint"], entry)


# ----------------------------------------------------------------------------- the three kinds


@dataclass
class _Parts:
    """Splits as read, before they are checked and stored: (x, y) pairs on the host."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor] | None
    classes: tuple[str, ...] | None  # a folder's class names; None: the labels' numbers


def _from_tensor_file(path: Path, text: str) -> _Parts:
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
    keys = ", ".join(sorted(map(str, arrays))) or "none"

    def pair(split: str, required: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        x_key, y_key = f"x_{split}", f"y_{split}"
        present = [k for k in (x_key, y_key) if k in arrays]
        if not present and not required:
            return None
        missing = [k for k in (x_key, y_key) if k not in arrays]
        if missing:
            raise TaskError(f"{text} has no {missing[0]} (its keys: {keys})")
        return _tensor(arrays[x_key], f"{text}: {x_key}"), _tensor(
            arrays[y_key], f"{text}: {y_key}"
        )

    return _Parts(pair("train", True), pair("val", False), pair("test", False), None)


def _from_loader(text: str, base: Path) -> _Parts:
    load = references.load(text, base)
    try:
        result = load()
    except Exception as e:
        raise TaskError(f"{text} raised {references.failure_line(e)}") from None
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise TaskError(
            f"{text} returned {type(result).__name__!r}; a loader returns (train, test), each "
            "an (x, y) pair or a Dataset of (x, y) items, test possibly None"
        )
    train, test = result
    if train is None:
        raise TaskError(f"{text} returned no training data (train is None)")
    return _Parts(
        _examples(train, f"{text}: train"),
        None,
        None if test is None else _examples(test, f"{text}: test"),
        None,
    )


def _examples(value: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """An (x, y) pair of arrays, or a map-style Dataset of (x, y) items, as two tensors."""
    if isinstance(value, tuple | list) and len(value) == 2 and all(map(_is_array, value)):
        return _tensor(value[0], f"{where} x"), _tensor(value[1], f"{where} y")
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
        xs, ys = [], []
        for i in range(len(value)):
            item = value[i]
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise TaskError(f"{where}: item {i} is {type(item).__name__!r}, not an (x, y) pair")
            xs.append(_tensor(item[0], f"{where}: item {i}'s x"))
            ys.append(int(_tensor(item[1], f"{where}: item {i}'s y").reshape(-1)[0]))
        if not xs:
            raise TaskError(f"{where}: the Dataset is empty")
        shapes = {tuple(x.shape) for x in xs}
        if len(shapes) > 1:
            raise TaskError(f"{where}: items have inputs of different shapes {sorted(shapes)[:2]}")
        return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
    raise TaskError(
        f"{where} is {type(value).__name__!r}; give an (x, y) pair of tensors or NumPy arrays, "
        "or a map-style Dataset of (x, y) items"
    )


def _is_array(value: Any) -> bool:
    return isinstance(value, torch.Tensor | np.ndarray)


def _tensor(value: Any, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if hasattr(value, "mode") and hasattr(
        value, "getdata"
    ):  # a PIL image, as torchvision hands out
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(value)
    try:
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(type(value).__name__)
        return torch.from_numpy(np.ascontiguousarray(array))
    except (TypeError, ValueError):
        raise TaskError(f"{where} is {type(value).__name__!r}, not a tensor or array") from None


# ----------------------------------------------------------------------------- checks and cache


def _store(
    parts: _Parts,
    text: str,
    kind: str,
    location: str,
    test_fraction: float,
    cache_dir: Path,
    key: str | None,
) -> UserData:
    """Check the splits, hold out a test split if there is none, and write the cache entry."""
    train = _checked(*parts.train, f"{text}: training data")
    val = None if parts.val is None else _checked(*parts.val, f"{text}: validation data")
    test = None if parts.test is None else _checked(*parts.test, f"{text}: test data")
    held_out = test is None
    if held_out:
        train, test = _hold_out(train, test_fraction, text)
    splits = [s for s in (train, val, test) if s is not None]
    shapes = {tuple(x.shape[1:]) for x, _ in splits}
    if len(shapes) > 1:
        raise TaskError(f"{text}: the splits' inputs have different shapes: {sorted(shapes)}")
    labels = torch.cat([y for _, y in splits])
    num_classes = int(labels.max()) + 1
    present = torch.bincount(labels, minlength=num_classes) > 0
    if not bool(present.all()):
        absent = int((~present).nonzero()[0])
        raise TaskError(
            f"{text}: labels must be the integers 0..K-1, but {absent} never occurs "
            f"(the largest is {num_classes - 1})"
        )
    classes = parts.classes or tuple(str(i) for i in range(num_classes))
    dtype = torch.uint8 if all(x.dtype == torch.uint8 for x, _ in splits) else torch.float32
    x = torch.cat([s[0].to(dtype) for s in splits])
    y = labels
    bounds = [len(train[1]), 0 if val is None else len(val[1]), len(test[1])]
    content = hashlib.sha256()
    for part in (x, y):
        content.update(memoryview(part.contiguous().numpy()).cast("B"))
    content.update(json.dumps([bounds, list(classes)]).encode())
    digest = content.hexdigest()
    fingerprint = {
        "data": text,
        "kind": kind,
        "location": location,
        "sha256": digest,
        "examples": dict(zip(("train", "val", "test"), bounds)),
        "test": "held out" if held_out else "own",
        "input_shape": list(x.shape[1:]),
        "num_classes": len(classes),
    }
    entry = cache_dir / f"{kind}-{key or digest[:32]}.pt"
    if entry.is_file():  # a loader's same content, or a process that got here first
        try:
            return open_cached(entry)
        except TaskError:
            pass  # unreadable: replaced below
    _write_atomically(
        entry,
        {
            "version": CACHE_VERSION,
            "x": x.contiguous(),
            "y": y,
            "bounds": bounds,
            "classes": list(classes),
            "fingerprint": fingerprint,
        },
    )
    return open_cached(entry)


def _checked(x: torch.Tensor, y: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() < 2:
        raise TaskError(
            f"{where}: inputs must have one row per example (N×...), got shape {tuple(x.shape)}"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise TaskError(
            f"{where}: inputs must be numbers, got {str(x.dtype).removeprefix('torch.')}"
        )
    if x.dim() == 3 and x.dtype == torch.uint8:
        x = x.unsqueeze(1)  # N×H×W 8-bit images: one channel
    if y.dim() != 1:
        hint = " (one-hot? pass y.argmax(1))" if y.dim() == 2 else ""
        raise TaskError(
            f"{where}: labels must be one class index per example, got shape {tuple(y.shape)}{hint}"
        )
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TaskError(
            f"{where}: labels must be integers 0..K-1, got {str(y.dtype).removeprefix('torch.')}"
        )
    if len(x) != len(y):
        raise TaskError(f"{where}: {len(x)} inputs but {len(y)} labels")
    if len(y) == 0:
        raise TaskError(f"{where}: no examples")
    if int(y.min()) < 0:
        raise TaskError(f"{where}: labels must be integers 0..K-1, got {int(y.min())}")
    return x, y.to(torch.int64)


def _hold_out(
    train: tuple[torch.Tensor, torch.Tensor], fraction: float, text: str
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A fixed share of the training examples as the test split, the same for every study."""
    x, y = train
    n_test = max(1, round(len(y) * fraction))
    if len(y) - n_test < 2:
        raise TaskError(f"{text}: {len(y)} training examples are too few to hold out a test split")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    keep, held = order[n_test:].sort().values, order[:n_test].sort().values
    return (x[keep], y[keep]), (x[held], y[held])


def _listing_key(
    kind: str, location: Path, image_size: tuple[int, int] | None, test_fraction: float
) -> str:
    """A hash of what the data is made of (each file's relative name, size and modification time)
    and of the settings that shape what is decoded from it."""
    files = (
        [location] if location.is_file() else sorted(p for p in location.rglob("*") if p.is_file())
    )
    listing = []
    for path in files:
        stat = path.stat()
        listing.append([str(path.relative_to(location.parent)), stat.st_size, stat.st_mtime_ns])
    payload = [CACHE_VERSION, kind, str(location), image_size, test_fraction, listing]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


def _write_atomically(entry: Path, payload: dict[str, Any]) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(
        dir=entry.parent, prefix=f".{entry.name}.", suffix=".partial"
    )
    try:
        os.chmod(partial, 0o644)  # readable like any file it replaces (mkstemp makes it private)
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, entry)  # another process's entry for the same key is the same data
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
