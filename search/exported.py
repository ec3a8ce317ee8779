"""An exported model folder: the model with its data preparation inside, and what using it needs.

`search export` writes it and `search predict` reads it. ``model.json`` says what a model trained
by the study needs to be used: the task's kind and metric, the class names in the order of the
model's outputs, each input's name, dtype and shape, and for image folders the image size, resize
method and channels the study decoded its images to. The model in ``model.pt`` (`Prepared`) takes
inputs as the data held them (images 0..255, token ids, raw features): the standardization with the
training statistics is inside it, and a regression model answers in the targets' own units.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search import given, tasks
from search.tasks import factory
from search.tasks.scaling import InputScale, TargetScale

USAGE_FILE = "model.json"
FACTORY_FILE = "factory.pkl"  # a model factory given from Python, pickled by value
STANDARDIZED, AS_INTEGERS, AS_FLOATS = "standardized", "as integers", "as floats"


class Prepared(nn.Module):
    """A trained model with its inputs' preparation and, for regression, its targets' scale: it
    takes raw inputs (one, or several positional ones) and answers in the targets' units."""

    def __init__(
        self,
        model: nn.Module,
        preparation: tuple[str, ...],
        shapes: tuple[tuple[int, ...], ...],
        target_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.preparation = preparation  # per input: STANDARDIZED, AS_INTEGERS or AS_FLOATS
        for i, (how, shape) in enumerate(zip(preparation, shapes, strict=True)):
            if how == STANDARDIZED:  # shaped (1, C, 1, ...) to broadcast over a batch
                broadcast = (1, shape[0], *[1] * (len(shape) - 1))
                self.register_buffer(_name("mean", i), torch.zeros(broadcast))
                self.register_buffer(_name("std", i), torch.ones(broadcast))
        self.regression = target_shape is not None
        if target_shape is not None:
            broadcast = (1, target_shape[0], *[1] * (len(target_shape) - 1))
            self.register_buffer("target_mean", torch.zeros(broadcast))
            self.register_buffer("target_std", torch.ones(broadcast))

    @classmethod
    def around(
        cls,
        model: nn.Module,
        inputs: InputScale,
        shapes: tuple[tuple[int, ...], ...],
        targets: TargetScale | None,
    ) -> Prepared:
        """``model`` with the statistics it was trained with."""
        preparation = tuple(_preparation(part) for part in inputs.parts)
        target_shape = None if targets is None else tuple(targets.mean.shape[1:])
        wrapped = cls(model, preparation, shapes, target_shape)
        for i, part in enumerate(inputs.parts):
            if part.mean is not None:
                getattr(wrapped, _name("mean", i)).copy_(part.mean.detach().cpu())
                getattr(wrapped, _name("std", i)).copy_(part.std.detach().cpu())
        if targets is not None:
            wrapped.target_mean.copy_(targets.mean.detach().cpu())
            wrapped.target_std.copy_(targets.std.detach().cpu())
        return wrapped

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        prepared = []
        for i, x in enumerate(inputs):
            how = self.preparation[i]
            if how == STANDARDIZED:
                mean, std = getattr(self, _name("mean", i)), getattr(self, _name("std", i))
                prepared.append((x.float() - mean) / std)
            elif how == AS_INTEGERS:
                prepared.append(x.long())
            else:
                prepared.append(x.float())
        output = self.model(*prepared)
        if self.regression:
            output = output * self.target_std + self.target_mean
        return output


def _name(kind: str, index: int) -> str:
    """The buffers of the first input keep the names of exports from before several inputs."""
    return kind if index == 0 else f"{kind}_{index}"


def _preparation(part: Any) -> str:
    if part.mean is not None:
        return STANDARDIZED
    return AS_INTEGERS if part.dtype == torch.int64 else AS_FLOATS


def raw_dtype(how: str) -> torch.dtype:
    """What a prepared input is fed as: integers as int64, everything else as float32."""
    return torch.int64 if how == AS_INTEGERS else torch.float32


def usage(folder: Path | str) -> dict[str, Any]:
    """``model.json``, or what an export from before it recorded (``metrics.json``): images or
    features of one input, standardized, classified."""
    folder = Path(folder)
    path = folder / USAGE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    num_classes = metrics.get("num_classes") or tasks.get(metrics["task"]).num_classes
    return {
        "kind": "classification",
        "metric": "accuracy",
        "direction": "maximize",
        "classes": [str(i) for i in range(num_classes)],
        "outputs": num_classes,
        "inputs": [
            {
                "name": "x",
                "dtype": "float32",
                "shape": metrics["input_shape"],
                "prepared": STANDARDIZED,
            }
        ],
        "targets": None,
        "image": None,
    }


def load_model(folder: Path | str) -> Prepared:
    """The model saved in ``folder/model.pt``, rebuilt by its factory from the folder's
    ``config.toml`` (model, fixed params) and ``model.json`` (inputs, outputs); a factory that
    was given from Python is in ``factory.pkl``, pickled by value."""
    folder = Path(folder)
    config = tomllib.loads((folder / "config.toml").read_text())
    used = usage(folder)
    params = {name: spec["choices"][0] for name, spec in config["params"].items()}
    task = config["task"]
    if given.is_marker(task["model"]):
        fn = given.loads((folder / FACTORY_FILE).read_bytes())
        made = factory.ModelFactory(task["model"], fn, task.get("model_args", {}))
    else:
        made = factory.resolve(task["model"], task.get("model_args", {}), folder)
    shapes = tuple(tuple(spec["shape"]) for spec in used["inputs"])
    input_shape = shapes if len(shapes) > 1 else shapes[0]
    targets = used.get("targets")
    model = Prepared(
        made.build(params, input_shape, used["outputs"]),
        tuple(spec["prepared"] for spec in used["inputs"]),
        shapes,
        tuple(targets["shape"]) if targets and targets.get("standardized") else None,
    )
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True, map_location="cpu"))
    return model.eval()
