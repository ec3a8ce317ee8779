"""The user's own data → splits, decoded once and cached: an image folder, a tensor file, a loader.

``task.data`` names one of:

- a folder in torchvision's ``ImageFolder`` layout, optionally split into ``train/``, ``val/`` and
  ``test/`` subfolders (`search.tasks.image_folder`);
- a ``.npz`` or ``.pt`` file in the convention of Keras' ``mnist.npz`` (``x_train``, ``y_train``,
  ``x_test``, ``y_test``, optional ``x_val``, ``y_val``; several inputs as ``x_train_NAME``), or a
  loader ``FILE.py:NAME`` / ``module:NAME`` returning ``(train, test)`` (`search.tasks.sources`).

Inputs N×C×H×W are images, N×H×W uint8 images get a channel, N×F are features (or token ids,
category codes) and other 3-D inputs N×C×L sequences. Targets are class labels (integers or
strings) or, for regression, floats; `search.tasks.checks` checks them. Without a test split of
its own, a fixed seeded share (``test_fraction``, seed 0, the same for every study) is held out
for `search export`.

The decoded splits go into one file under ``studies/cache/``: each input as one tensor of every
split (8-bit images as uint8, floats as float32, integers as int64), the targets and the split
boundaries, read back memory-mapped. A folder's or tensor file's entry is named by a hash of its
listing (relative names, sizes, modification times) and the settings that shape it, so a study's
100 trials and every worker process read the decoded tensors instead of the images. A loader is
called once per command, and data given from Python (``search.run(data=(train, test))``) read
once per call; their entries are named by a hash of the bytes of their tensors. Entries are
written to a temporary file and renamed into place, so two processes filling the cache at once
both end with a whole file. This module imports no Optuna.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search import given, references
from search.errors import TaskError
from search.tasks import image_folder, sources
from search.tasks.checks import TargetRule, check
from search.tasks.registry import Split
from search.tasks.scaling import is_integer

CACHE_VERSION = 2
TENSOR_SUFFIXES = (".npz", ".pt")
RESIZE = "bilinear"  # how a folder's images are resized to task.image_size (torchvision's Resize)


@dataclass(frozen=True)
class UserData:
    """The user's data as the harness trains on it (tensors memory-mapped from the cache).

    Attributes:
        train: the training split (the study carves its validation split from it unless
            ``val`` is given).
        val: the data's own validation split, if it has one.
        test: its test split, or the held-out share.
        classes: class names (a folder's subfolders, a Dataset's ``classes``, string labels in
            sorted order; ``0``..``K-1`` otherwise; none for regression).
        outputs: what the model outputs per example: classes, or regression targets.
        fingerprint: what a study records to tell later that its data changed, and what a model
            trained on it needs to be used (classes, inputs, image size).
        cache: the cache entry the tensors are read from.
    """

    train: Split
    val: Split | None
    test: Split
    classes: tuple[str, ...]
    outputs: int
    fingerprint: dict[str, Any]
    cache: Path

    @property
    def input_shape(self) -> tuple[Any, ...]:
        """One example's shape; for several inputs, a tuple of their shapes."""
        inputs = self.train.inputs
        if isinstance(inputs, tuple):
            return tuple(tuple(x.shape[1:]) for x in inputs)
        return tuple(inputs.shape[1:])

    @property
    def num_classes(self) -> int:
        return self.outputs


def read(
    text: str,
    base: Path,
    *,
    image_size: tuple[int, int] | None,
    test_fraction: float,
    cache_dir: Path,
    rule: TargetRule | None = None,
    objects: Any = None,
) -> UserData:
    """The data ``text`` names (relative to ``base``), from the cache when it holds it; for a
    marker of data given from Python (`search.given`), ``objects``: a (train, test) pair.

    Raises:
        TaskError: the data is missing or malformed; the message says which file and why.
    """
    rule = rule or TargetRule()
    if given.is_marker(text):
        if image_size is not None:
            raise TaskError("task.image_size resizes a folder's images; data= hands them over")
        parts = sources.from_pair(objects, "data=")
        # Named "data=" in messages; its cache entry by a hash of its bytes, as a loader's.
        return _store(
            parts, "data=", "python", "given from Python", test_fraction, cache_dir, None, rule
        )
    is_loader = references.looks_like_reference(text) and not text.endswith(TENSOR_SUFFIXES)
    if image_size is not None and (is_loader or text.endswith(TENSOR_SUFFIXES)):
        raise TaskError(
            f"{text}: task.image_size resizes the images of a folder; a tensor file or loader "
            "hands over its inputs as they are"
        )
    if is_loader:
        parts = sources.from_loader(text, base)
        return _store(parts, text, "loader", text, test_fraction, cache_dir, None, rule)
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
    key = _listing_key(kind, location, image_size, test_fraction, rule)
    entry = cache_dir / f"{kind}-{key}.pt"
    if entry.is_file():
        try:
            return open_cached(entry)
        except TaskError:
            pass  # an unreadable entry (a disk that filled up): decode again and replace it
    image = None
    if kind == "folder":
        train, val, test, classes = image_folder.read(location, text, image_size)
        parts = sources.Parts(
            *(None if p is None else sources.Part((p[0],), p[1]) for p in (train, val, test)),
            classes=classes,
        )
        image = {"size": list(image_size) if image_size else None, "resize": RESIZE}
    else:
        parts = sources.from_tensor_file(location, text)
    return _store(parts, text, kind, str(location), test_fraction, cache_dir, key, rule, image)


def open_cached(entry: Path) -> UserData:
    """A cache entry, its tensors memory-mapped (read only as training touches them)."""
    try:
        stored = torch.load(entry, mmap=True, weights_only=True, map_location="cpu")
        if stored.get("version") != CACHE_VERSION:
            raise ValueError(f"cache format {stored.get('version')}")
        inputs, y = stored["inputs"], stored["y"]
        n_train, n_val, _ = stored["bounds"]
    except (OSError, RuntimeError, ValueError, KeyError, EOFError) as e:
        raise TaskError(
            f"data cache {entry}: unreadable ({e}); delete it to decode again"
        ) from None
    x = tuple(inputs) if len(inputs) > 1 else inputs[0]
    whole = Split(x, y)
    train = whole.take(slice(0, n_train))
    val = whole.take(slice(n_train, n_train + n_val)) if n_val else None
    test = whole.take(slice(n_train + n_val, len(y)))
    return UserData(
        train,
        val,
        test,
        tuple(stored["classes"]),
        stored["outputs"],
        stored["fingerprint"],
        entry,
    )


# ----------------------------------------------------------------------------- checks and cache


def _store(
    parts: sources.Parts,
    text: str,
    kind: str,
    location: str,
    test_fraction: float,
    cache_dir: Path,
    key: str | None,
    rule: TargetRule,
    image: dict[str, Any] | None = None,
) -> UserData:
    """Check the splits, hold out a test split if there is none, and write the cache entry."""
    checked = check(parts, text, rule)
    splits = checked.splits
    held_out = "test" not in splits
    if held_out:
        splits["train"], splits["test"] = _hold_out(splits["train"], test_fraction, text)
    ordered = [splits[name] for name in ("train", "val", "test") if name in splits]
    inputs = []
    for column in zip(*(x for x, _ in ordered), strict=True):
        inputs.append(torch.cat([part.to(_stored_dtype(column)) for part in column]).contiguous())
    y = torch.cat([y for _, y in ordered])
    bounds = [len(splits["train"][1]), len(splits["val"][1]) if "val" in splits else 0]
    bounds.append(len(splits["test"][1]))
    classes = checked.classes
    content = hashlib.sha256()
    for part in (*inputs, y):
        content.update(memoryview(part.numpy()).cast("B"))
    content.update(json.dumps([bounds, list(classes)]).encode())
    digest = content.hexdigest()
    names = list(parts.names) if parts.names else ["x"]
    fingerprint = {
        "data": text,
        "kind": kind,
        "location": location,
        "sha256": digest,
        "examples": dict(zip(("train", "val", "test"), bounds, strict=True)),
        "test": "held out" if held_out else "own",
        "input_shape": list(inputs[0].shape[1:]),
        "inputs": [
            {"name": name, "dtype": _dtype(x), "shape": list(x.shape[1:])}
            for name, x in zip(names, inputs, strict=True)
        ],
        "num_classes": checked.outputs,
        "classes": list(classes),
        "targets": {"dtype": _dtype(y), "shape": list(y.shape[1:])},
    }
    if image is not None:
        fingerprint["image"] = {**image, "channels": int(inputs[0].shape[1])}
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
            "inputs": inputs,
            "y": y,
            "bounds": bounds,
            "classes": list(classes),
            "outputs": checked.outputs,
            "fingerprint": fingerprint,
        },
    )
    return open_cached(entry)


def _stored_dtype(parts: tuple[torch.Tensor, ...]) -> torch.dtype:
    """One input's dtype in the cache: 8-bit images stay uint8, integers int64, floats float32."""
    if all(x.dtype == torch.uint8 for x in parts):
        return torch.uint8
    if all(is_integer(x) for x in parts):
        return torch.int64
    return torch.float32


def _dtype(x: torch.Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


Pair = tuple[tuple[torch.Tensor, ...], torch.Tensor]


def _hold_out(train: Pair, fraction: float, text: str) -> tuple[Pair, Pair]:
    """A fixed share of the training examples as the test split, the same for every study."""
    x, y = train
    n_test = max(1, round(len(y) * fraction))
    if len(y) - n_test < 2:
        raise TaskError(f"{text}: {len(y)} training examples are too few to hold out a test split")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    keep, held = order[n_test:].sort().values, order[:n_test].sort().values
    return (tuple(p[keep] for p in x), y[keep]), (tuple(p[held] for p in x), y[held])


def _listing_key(
    kind: str,
    location: Path,
    image_size: tuple[int, int] | None,
    test_fraction: float,
    rule: TargetRule,
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
    payload = [CACHE_VERSION, kind, str(location), image_size, test_fraction]
    payload += [rule.kind, rule.as_given, listing]
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
