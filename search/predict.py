"""`search predict MODEL_DIR INPUT`: an exported model scores new data, prepared as its study's was.

INPUT is one of:

- a folder of images (any depth), or a single image: decoded as the study decoded its folder (the
  same channels, resized to its ``image_size`` with the same method); images in class subfolders
  named like the model's classes (a ``test/`` folder in ``ImageFolder`` layout) are labelled by
  them, and the metric is printed;
- a ``.npz`` / ``.pt`` file: the inputs ``x`` (or ``x_test``; several inputs as ``x_NAME`` /
  ``x_test_NAME``, named as the study's were) and, if present, the targets ``y`` (``y_test``),
  which the metric is computed against.

Each row of the output is an input (a file, or a row of the tensor file) and its prediction: the
class name and its probability, or the regression values in the targets' own units. The metric on
labelled input is the study's (`search.scoring`), computed as the search computed it.
"""

from __future__ import annotations

import csv
import io
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search import scoring
from search.errors import SettingsError, TaskError
from search.exported import load_model, raw_dtype, usage
from search.tasks import image_folder, sources
from search.tasks.data import for_metric

BATCH = 256
TENSOR_SUFFIXES = (".npz", ".pt")


@dataclass(frozen=True)
class Predictions:
    """What `search predict` found: a row per input, and the metric where labels were given."""

    names: list[str]  # the input of each row: a file path, or the row's index
    outputs: torch.Tensor  # the model's outputs: logits, or values in the targets' units
    classes: list[str]
    kind: str
    metric: str
    value: float | None  # the metric against the given labels, or None
    labelled: int  # how many rows had labels

    def rows(self) -> list[list[str]]:
        """The CSV rows, a header first."""
        if self.kind == "classification":
            probabilities = torch.softmax(self.outputs.float(), dim=1)
            best, index = probabilities.max(dim=1)
            # Outputs N×K×...: a class per position, in row-major order, and their mean
            # probability.
            index, best = index.reshape(len(index), -1), best.reshape(len(best), -1)
            rows = [["input", "prediction", "probability"]]
            for name, row, chances in zip(self.names, index.tolist(), best, strict=True):
                labels = [self.classes[i] if i < len(self.classes) else str(i) for i in row]
                rows.append([name, " ".join(labels), f"{float(chances.mean()):.4f}"])
            return rows
        values = self.outputs.reshape(len(self.names), -1)
        columns = values.shape[1]
        head = ["prediction"] if columns == 1 else [f"prediction_{i}" for i in range(columns)]
        return [["input", *head]] + [
            [name, *(f"{v:.6g}" for v in row)]
            for name, row in zip(self.names, values.tolist(), strict=True)
        ]

    def csv(self) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(self.rows())
        return out.getvalue()


def predict(model_dir: Path | str, source: Path | str, device: str = "cpu") -> Predictions:
    """Score ``source`` with the model exported to ``model_dir``.

    Raises:
        SettingsError: the folder is not an export, or the input is missing, of another shape
            or dtype than the model takes, or holds NaN or infinite values.
    """
    model_dir, source = Path(model_dir), Path(source)
    if not (model_dir / "model.pt").is_file() or not (model_dir / "config.toml").is_file():
        raise SettingsError(
            f"{model_dir}: not a model folder (no model.pt and config.toml); make one with "
            "search export STUDY --out FOLDER"
        )
    if not source.exists():
        raise SettingsError(f"{source}: no such file or folder")
    used = usage(model_dir)
    try:
        model = load_model(model_dir).to(device)
    except TaskError as e:
        raise SettingsError(f"{model_dir}: the model cannot be rebuilt: {e}") from None
    if source.is_dir() or source.suffix.lower() not in TENSOR_SUFFIXES:
        names, inputs, labels = _images(source, used)
    else:
        names, inputs, labels = _tensors(source, used)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(names), BATCH):
            batch = [x[start : start + BATCH].to(device) for x in inputs]
            outputs.append(model(*batch).float().cpu())
    output = torch.cat(outputs)
    value = None
    if labels is not None:
        metric = _scoring(model_dir, used).new_metric(torch.device("cpu"))
        metric.update(output, labels)
        value = metric.compute()
    return Predictions(
        names,
        output,
        list(used["classes"]),
        used["kind"],
        used["metric"],
        value,
        0 if labels is None else len(labels),
    )


def _scoring(model_dir: Path, used: dict[str, Any]) -> scoring.Scoring:
    """The study's metric, from the export's config.toml (built-in, or the user's by reference)."""
    task = tomllib.loads((model_dir / "config.toml").read_text()).get("task", {})
    metric = task.get("metric") or used["metric"]
    return scoring.Scoring(
        kind=used["kind"],
        metric=metric,
        direction=used.get("direction", "maximize"),
        outputs=used["outputs"],
        base=model_dir,
    )


def _images(
    source: Path, used: dict[str, Any]
) -> tuple[list[str], list[torch.Tensor], torch.Tensor | None]:
    """Images decoded as the study decoded its folder; labels where class folders name them."""
    specs = used["inputs"]
    if len(specs) != 1 or len(specs[0]["shape"]) != 3 or specs[0]["dtype"] != "uint8":
        raise SettingsError(
            f"{source}: this model takes {_described(specs)}, not 8-bit images; give a .npz or "
            ".pt file of such inputs"
        )
    channels, height, width = specs[0]["shape"]
    image = used.get("image") or {}
    size = tuple(image["size"]) if image.get("size") else None
    files = [source] if source.is_file() else image_folder.image_files(source)
    if not files:
        raise SettingsError(f"{source}: no images in it ({', '.join(image_folder.EXTENSIONS)})")
    decoded = []
    for path in files:
        try:
            x = image_folder.decode(path, channels, size)
        except TaskError as e:
            raise SettingsError(str(e)) from None
        if tuple(x.shape) != (channels, height, width):
            raise SettingsError(
                f"{path}: {x.shape[1]}×{x.shape[2]} pixels; the model takes {height}×{width} "
                "(its study read images of that size without resizing them)"
            )
        decoded.append(x)
    names = [str(path) for path in files]
    labels = _folder_labels(source, files, used["classes"])
    x = torch.stack(decoded).to(raw_dtype(specs[0]["prepared"]))
    return names, [x], labels


def _folder_labels(source: Path, files: list[Path], classes: list[str]) -> torch.Tensor | None:
    """Each image's class, where every image lies in a subfolder named like one of the model's
    classes (as a test folder in ImageFolder layout does)."""
    if source.is_file() or not classes:
        return None
    index = {name: i for i, name in enumerate(classes)}
    parents = [path.parent.name for path in files]
    if not all(parent in index and path.parent != source for parent, path in zip(parents, files)):
        return None
    return torch.tensor([index[parent] for parent in parents])


def _tensors(
    source: Path, used: dict[str, Any]
) -> tuple[list[str], list[torch.Tensor], torch.Tensor | None]:
    arrays = sources.read_arrays(source, str(source))
    specs = used["inputs"]
    keys = ", ".join(sorted(arrays)) or "none"
    prefix = next(
        (p for p in ("x", "x_test") if all(_key(p, s, len(specs)) in arrays for s in specs)), None
    )
    if prefix is None:
        wanted = " and ".join(_key("x", s, len(specs)) for s in specs)
        raise SettingsError(
            f"{source}: no {wanted} (or the same with x_test) for the model's inputs (its keys: "
            f"{keys})"
        )
    inputs = []
    for spec in specs:
        key = _key(prefix, spec, len(specs))
        x = sources.tensor(arrays[key], f"{source}: {key}")
        inputs.append(_checked(x, spec, f"{source}: {key}"))
    n = {len(x) for x in inputs}
    if len(n) > 1:
        raise SettingsError(f"{source}: the inputs have different numbers of rows: {sorted(n)}")
    label_key = "y" if prefix == "x" else "y_test"
    labels = None
    if label_key in arrays:
        labels = _labels(arrays[label_key], used, f"{source}: {label_key}", len(inputs[0]))
    return [str(i) for i in range(len(inputs[0]))], inputs, labels


def _key(prefix: str, spec: dict[str, Any], count: int) -> str:
    return prefix if count == 1 else f"{prefix}_{spec['name']}"


def _checked(x: torch.Tensor, spec: dict[str, Any], where: str) -> torch.Tensor:
    """An input of the shape and kind the model was trained on."""
    shape = tuple(spec["shape"])
    if tuple(x.shape) == shape:
        x = x.unsqueeze(0)  # a single example
    elif len(shape) == 3 and shape[0] == 1 and tuple(x.shape[1:]) == shape[1:]:
        x = x.unsqueeze(1)  # N×H×W images: one channel, as the study read them
    if tuple(x.shape[1:]) != shape:
        raise SettingsError(
            f"{where}: examples of shape {tuple(x.shape[1:])}; the model takes {shape}"
        )
    if spec["prepared"] == "as integers" and (x.is_floating_point() or x.dtype == torch.bool):
        raise SettingsError(
            f"{where}: {str(x.dtype).removeprefix('torch.')} values; the model takes integers "
            f"({spec['dtype']}: ids or codes)"
        )
    if x.is_floating_point():
        bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
        if bool(bad.any()):
            count = int(bad.sum())
            raise SettingsError(
                f"{where}: {count} row{'s hold' if count != 1 else ' holds'} NaN or infinite "
                f"values (the first: row {int(bad.nonzero()[0])})"
            )
    return x.to(raw_dtype(spec["prepared"]))


def _labels(value: Any, used: dict[str, Any], where: str, n: int) -> torch.Tensor:
    """Targets to score against: class names or indices, or regression values."""
    y = sources.targets(value, where)
    if isinstance(y, np.ndarray):  # class names
        index = {name: i for i, name in enumerate(used["classes"])}
        unknown = sorted({str(v) for v in y.ravel()} - set(index))
        if unknown:
            raise SettingsError(
                f"{where}: labels the model does not know: {', '.join(unknown[:3])}"
            )
        y = torch.tensor([index[str(v)] for v in y.ravel()]).reshape(y.shape)
    if len(y) != n:
        raise SettingsError(f"{where}: {len(y)} labels for {n} inputs")
    if used["kind"] == "regression":
        y = y.to(torch.float32)
        return y if y.dim() > 1 else y.unsqueeze(1)
    return for_metric(y)


def _described(specs: list[dict[str, Any]]) -> str:
    shown = []
    for spec in specs:
        text = f"{spec['name']} {'×'.join(map(str, spec['shape']))} {spec['dtype']}"
        if spec.get("range"):
            text += f" (values {spec['range'][0]:g} to {spec['range'][1]:g})"
        shown.append(text)
    return ", ".join(shown)


def summary(predictions: Predictions) -> str:
    """One line: how many predictions, and the metric where labels were given."""
    count = len(predictions.names)
    line = f"{count} prediction{'s' if count != 1 else ''}"
    if predictions.value is not None and not math.isnan(predictions.value):
        line += f"; {predictions.metric} {predictions.value:.4f} on {predictions.labelled} labelled"
    return line


def write_csv(predictions: Predictions, out: Path) -> Path:
    """The CSV at ``out``, written whole or not at all."""
    if out.parent and not out.parent.is_dir():
        raise SettingsError(f"--out {out}: folder {out.parent} does not exist")
    partial = out.with_name(f".{out.name}.partial")
    try:
        partial.write_text(predictions.csv())
        partial.replace(out)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise SettingsError(f"--out {out}: cannot write: {e.strerror or e}") from None
    return out
