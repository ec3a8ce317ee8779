"""The user's data checked once, as it is read: every problem one line that says where it is.

Inputs must be numbers with one row per example, finite where they are floats (a NaN or an
infinity is reported with its split, how many examples have one, and the first). Targets depend on
the task's kind:

- classification: one class per example, as integers 0..K-1 (integral floats too) or as strings,
  which are mapped to classes in sorted order and keep their names; labels that look like
  regression targets (floats with fractions) are refused with a hint naming ``task.kind``;
- regression: float targets of shape N (one per example) or N×T, finite; integer targets with few
  distinct values look like classes, and are refused with the same hint;
- with the user's own loss or metric, targets of any shape (per-pixel labels for segmentation,
  say) pass as they are, integers as int64 (negative ones too: an ``ignore_index`` for the
  user's loss) and floats as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from search.errors import TaskError
from search.tasks.sources import Part, Parts

FEW_VALUES = 10  # integer regression targets with at most this many values look like classes
SHOWN = 3  # example values shown in a hint


@dataclass(frozen=True)
class TargetRule:
    """What the targets must be: the task's kind, and whether the user's own loss or metric
    takes them as they come."""

    kind: str = "classification"
    as_given: bool = False


@dataclass(frozen=True)
class Checked:
    """Splits whose values are checked: inputs as tensors, targets as the task needs them."""

    splits: dict[str, tuple[tuple[torch.Tensor, ...], torch.Tensor]]
    classes: tuple[str, ...]  # class names (none for regression or targets taken as given)
    outputs: int  # what the model outputs per example (per position): classes or targets


def check(parts: Parts, text: str, rule: TargetRule) -> Checked:
    """Every split of ``parts`` checked and converted (``text``: the data as the space names
    it); string labels mapped to sorted class names.

    Raises:
        TaskError: naming the split and what is wrong.
    """
    found = {name: part for name, part in zip(("train", "val", "test"), _parts(parts)) if part}
    where = {name: f"{text}: {_SPLIT_WORDS[name]}" for name in found}
    classes = parts.classes
    strings = {name for name, part in found.items() if isinstance(part.targets, np.ndarray)}
    if strings:
        if strings != set(found):
            raise TaskError(
                f"{text}: the {_SPLIT_WORDS[min(set(found) - strings)]} has numeric labels but "
                f"the {_SPLIT_WORDS[min(strings)]} has strings; use one kind for every split"
            )
        if rule.kind != "classification":
            raise TaskError(
                f"{where['train']}: targets are strings ({_some(found['train'].targets)}); "
                'regression needs numbers (strings are class names: leave out task.kind = "regression")'
            )
        classes = tuple(sorted({str(v) for part in found.values() for v in part.targets.ravel()}))
        index = {name: i for i, name in enumerate(classes)}
        found = {
            name: Part(
                part.inputs,
                torch.tensor(
                    np.vectorize(index.__getitem__, otypes=[np.int64])(part.targets)
                ).reshape(part.targets.shape),
            )
            for name, part in found.items()
        }
    splits = {name: _split(part, where[name], rule) for name, part in found.items()}
    shapes = {tuple(x.shape[1:]) for inputs, _ in splits.values() for x in inputs[:1]}
    if len({tuple(tuple(x.shape[1:]) for x in inputs) for inputs, _ in splits.values()}) > 1:
        raise TaskError(f"{text}: the splits' inputs have different shapes: {sorted(shapes)}")
    if len({tuple(y.shape[1:]) for _, y in splits.values()}) > 1:
        raise TaskError(f"{text}: the splits' targets have different shapes")
    labels = torch.cat([y for _, y in splits.values()])
    if labels.is_floating_point():  # regression, or float targets of the user's own loss
        return Checked(splits, (), labels.shape[1] if labels.dim() > 1 else 1)
    if rule.as_given:
        # The user's own loss and metric: negative labels are theirs to ignore (an ignore_index,
        # padding), and a class may be absent from the data; the model outputs every class up to
        # the largest label.
        valid = labels[labels >= 0]
        if len(valid) == 0:
            raise TaskError(f"{text}: every label is negative; classes are 0..K-1")
        outputs = int(valid.max()) + 1
        if classes is not None and len(classes) >= outputs:
            return Checked(splits, classes, len(classes))
        return Checked(splits, tuple(str(i) for i in range(outputs)), outputs)
    outputs = int(labels.max()) + 1
    if classes is not None and len(classes) < outputs:
        raise TaskError(
            f"{text}: labels go up to {outputs - 1} but the data names {len(classes)} classes"
        )
    present = torch.bincount(labels.flatten(), minlength=outputs) > 0
    if classes is None and not bool(present.all()):
        absent = int((~present).nonzero()[0])
        raise TaskError(
            f"{text}: labels must be the integers 0..K-1, but {absent} never occurs "
            f"(the largest is {outputs - 1})"
        )
    classes = classes or tuple(str(i) for i in range(outputs))
    return Checked(splits, classes, len(classes))


_SPLIT_WORDS = {"train": "training data", "val": "validation data", "test": "test data"}


def _parts(parts: Parts) -> tuple[Part | None, Part | None, Part | None]:
    return parts.train, parts.val, parts.test


def _split(
    part: Part, where: str, rule: TargetRule
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    inputs, y = _inputs(part.inputs, where), _targets(part.targets, where, rule)
    if len(inputs[0]) != len(y):
        raise TaskError(f"{where}: {len(inputs[0])} inputs but {len(y)} labels")
    if len(y) == 0:
        raise TaskError(f"{where}: no examples")
    return inputs, y


def _inputs(inputs: tuple[torch.Tensor, ...], where: str) -> tuple[torch.Tensor, ...]:
    checked = []
    for i, x in enumerate(inputs):
        which = f"input {i}" if len(inputs) > 1 else "inputs"
        if x.dim() < 2:
            raise TaskError(
                f"{where}: {which} must have one row per example (N×...), got shape "
                f"{tuple(x.shape)}"
            )
        if x.dtype == torch.bool or x.is_complex():
            raise TaskError(f"{where}: {which} must be numbers, got {_dtype(x)}")
        if x.dim() == 3 and x.dtype == torch.uint8:
            x = x.unsqueeze(1)  # N×H×W 8-bit images: one channel
        if x.is_floating_point():
            _finite(x, where, which)
        checked.append(x)
    n = {len(x) for x in checked}
    if len(n) > 1:
        raise TaskError(f"{where}: the inputs have different numbers of rows: {sorted(n)}")
    return tuple(checked)


def _finite(values: torch.Tensor, where: str, what: str) -> None:
    """A one-line error naming how many examples hold a NaN or an infinity, and the first."""
    bad = ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
    count = int(bad.sum())
    if count:
        first = int(bad.nonzero()[0])
        kinds = "NaN" if torch.isnan(values[first]).any() else "infinite"
        raise TaskError(
            f"{where}: {count} example{'s have' if count > 1 else ' has'} NaN or infinite "
            f"{what} (the first: example {first}, {kinds}); fix or drop them before searching"
        )


def _targets(y: torch.Tensor, where: str, rule: TargetRule) -> torch.Tensor:
    if y.dim() == 0:
        raise TaskError(f"{where}: labels must have one row per example, got a single value")
    if y.is_complex():
        raise TaskError(f"{where}: labels must be numbers, got {_dtype(y)}")
    if y.dtype == torch.bool:
        y = y.to(torch.int64)
    if y.is_floating_point():
        _finite(y, where, "targets" if rule.kind == "regression" else "labels")
    if rule.as_given:  # the user's own loss or metric takes them as they are
        return y.to(torch.float32) if y.is_floating_point() else y.to(torch.int64)
    if rule.kind == "regression":
        return _regression_targets(y, where)
    return _labels(y, where)


def _labels(y: torch.Tensor, where: str) -> torch.Tensor:
    if y.dim() != 1:
        hint = " (one-hot? pass y.argmax(1))" if y.dim() == 2 else ""
        raise TaskError(
            f"{where}: labels must be one class index per example, got shape {tuple(y.shape)}{hint}"
        )
    if y.is_floating_point():
        fractional = y != y.round()
        if bool(fractional.any()):
            distinct = torch.unique(y)
            raise TaskError(
                f"{where}: labels are floats with {len(distinct):,} distinct values "
                f'({_some(distinct)}); for a regression target, set task.kind = "regression"'
            )
        y = y.to(torch.int64)
    if int(y.min()) < 0:
        raise TaskError(f"{where}: labels must be integers 0..K-1, got {int(y.min())}")
    return y.to(torch.int64)


def _regression_targets(y: torch.Tensor, where: str) -> torch.Tensor:
    if y.dim() > 2:
        raise TaskError(
            f"{where}: regression targets must be N or N×T, got shape {tuple(y.shape)} (name "
            "your own task.loss and task.metric for targets of other shapes)"
        )
    if not y.is_floating_point():
        distinct = torch.unique(y)
        if len(distinct) <= FEW_VALUES:
            raise TaskError(
                f"{where}: targets are integers with {len(distinct)} distinct values "
                f'({_some(distinct)}): classes? leave out task.kind = "regression"; or store '
                "them as floats to regress on them"
            )
    y = y.to(torch.float32)
    return y if y.dim() == 2 else y.unsqueeze(1)


def _some(values: torch.Tensor | np.ndarray) -> str:
    flat = values.flatten() if isinstance(values, torch.Tensor) else values.ravel()
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in flat[:SHOWN].tolist()]
    return ", ".join(shown) + (", ..." if len(flat) > SHOWN else "")


def _dtype(x: torch.Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")
