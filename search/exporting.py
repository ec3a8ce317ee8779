"""`search export`: retrain a trial's configuration, score it on the test set, write a model to ship.

The directory holds:

- ``model.pt``: the state dict (loadable with ``weights_only=True``;
  `search.exported.load_model` rebuilds it);
- ``model.json``: what using the model needs (`search.exported`): kind and metric, class names,
  each input's name, dtype and shape, the image size and resize method of folder data;
- ``config.toml``: a space file with the task, the model (a family, or the user's factory by an
  absolute reference) and each param fixed to the trial's value, runnable again with
  ``search run --space DIR/config.toml``;
- ``metrics.json``: the validation and test metric (``test_accuracy``, ``test_rmse`` ...), epochs,
  seconds, seeds, device and versions;
- ``model.torchscript.pt`` where ``torch.jit.trace`` captures the model and, with the ``onnx`` extra
  installed, ``model.onnx`` where the exporter does; a model that they cannot capture (a user's,
  with Python control flow) gets a line saying why the file was skipped.

Every model file takes raw inputs (the dataset's own scale): the preparation with the training
statistics is part of the model, and a regression model answers in the targets' units. Each
exported file is loaded back and run on a test batch before the directory appears, and the largest
difference from the trained model is recorded. The directory is written beside its final path and
renamed into place, so an interrupted export leaves nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from search import given, references, retrain, runner, spaces, trackers
from search import study as studies
from search.contract import Inputs, map_inputs
from search.errors import SettingsError, StorageError
from search.exported import AS_INTEGERS, FACTORY_FILE, USAGE_FILE, Prepared, load_model, raw_dtype
from search.given import NOTHING, Given
from search.own_objective import run_own_training
from search.tasks import Task, placement, resolve
from search.train import pick_device

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
TOLERANCE = 1e-4  # largest difference (relative to the outputs' scale) of a file from the model


@dataclass(frozen=True)
class ExportSettings:
    study: str
    out: Path
    storage: str | None = None
    trial: int | None = None
    epochs: int | None = None
    full_train: bool = False
    device: str | None = None
    data_dir: Path = Path("data")
    download: bool = False
    mlflow: str | None = None  # also log the model, its metric and files to this tracking URI
    objects: Given = NOTHING  # what a study made from Python objects needs again (search.given)


@dataclass(frozen=True)
class Exported:
    out: Path
    model: Prepared  # the trained model, preparation included, on the CPU, in eval mode
    metrics: dict[str, Any]
    sample: Inputs  # raw test inputs the exported files were checked on


def chosen_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number``, or the study's best (for several objectives, the one with the best
    metric on the Pareto front)."""
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        if not 0 <= number < len(trials):
            raise SettingsError(
                f"--trial {number}: study {study.study_name} has trials 0..{len(trials) - 1}"
            )
        trial = trials[number]
        if not studies.epoch_values(trial) or trial.state not in (
            TrialState.COMPLETE,
            TrialState.PRUNED,
        ):
            raise SettingsError(f"--trial {number}: it is {trial.state.name}, with no result")
        return trial
    best = studies.best_trial(study)
    if best is None:
        raise StorageError(f"study {study.study_name} has no complete trial yet")
    return best


def export(settings: ExportSettings, echo: Any = print) -> Exported:
    """Retrain the chosen trial and write its directory; see the module docstring."""
    if settings.epochs is not None and settings.epochs < 1:
        raise SettingsError(f"--epochs must be at least 1, got {settings.epochs}")
    out = settings.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SettingsError(f"--out {out}: already exists and is not empty; name a new folder")
    if out.parent.exists() and not out.parent.is_dir():
        raise SettingsError(f"--out {out}: {out.parent} is not a folder")
    url = settings.storage or studies.default_url(settings.study)
    study = studies.load_existing(settings.study, url)
    mlflow_uri = None
    if settings.mlflow:
        mlflow_uri = trackers.resolve(None, None, settings.mlflow).mlflow
        from search.trackers.mlflow import check_answers

        check_answers(mlflow_uri)
    stored = study.user_attrs.get(studies.SETTINGS_ATTR)
    if stored is None or studies.SPACE_ATTR not in study.user_attrs:
        raise StorageError(f"study {settings.study} was not created by search run")
    space = runner.stored_space(study)
    runner.check_objects(study, space, settings.objects, None)
    trial = chosen_trial(study, settings.trial)
    task = resolve.resolve(
        space, data_dir=settings.data_dir, download=settings.download, objects=settings.objects
    )
    runner.check_unchanged(study, task, "its trials cannot be reproduced on what is there now")
    if task.train is not None:
        return _export_own_training(settings, study, task, trial, echo)
    device = pick_device(settings.device)
    data = placement.load_data(
        task,
        space,
        seed=stored["seed"],
        device=device,
        data_dir=settings.data_dir,
        download=settings.download,
    )
    metric = studies.metric_of(study)
    curve = studies.epoch_values(trial)
    best_epoch = max(curve, key=lambda epoch: (metric.key(curve[epoch]), -epoch))
    # Whole epochs: a best report inside an epoch is found again by reporting as the trial did.
    epochs = settings.epochs or math.ceil(best_epoch if settings.full_train else max(curve))
    if settings.full_train:
        data = data.with_validation_in_training()
    seed = studies.trial_attrs(trial).get("seed", studies.trial_seed(stored["seed"], trial.number))
    echo(
        f"retraining trial {trial.number} of {settings.study} for {epochs} "
        f"epoch{'s' if epochs != 1 else ''} on {device}"
        + (" (train + validation)" if settings.full_train else "")
    )
    start = time.perf_counter()
    again = retrain.retrain(
        task,
        space,
        data,
        trial.params,
        seed=seed,
        epochs=epochs,
        schedule_epochs=stored["epochs"],
        keep="last" if settings.full_train else "best",
        reports_per_epoch=studies.reports_per_epoch(trial),
    )
    seconds = time.perf_counter() - start
    test_split = task.load(settings.data_dir, settings.download, False)
    test_value = retrain.test_value(again.model, task, data, test_split)
    shapes = _shapes(task)
    model = Prepared.around(again.model, data.inputs, shapes, data.targets).to("cpu").eval()
    sample = _raw(map_inputs(lambda x: x[:64], test_split.inputs), model)

    name = metric.name
    metrics = {
        "study": settings.study,
        "trial": trial.number,
        "params": trial.params,
        "metric": name,
        "direction": metric.direction,
        f"trial_val_{name}": studies.trial_result(trial, metric),
        f"val_{name}": None if settings.full_train else again.value,
        f"test_{name}": test_value,
        "epochs": epochs,
        "best_epoch": None if settings.full_train else again.best_epoch,
        "full_train": settings.full_train,
        "seconds": round(seconds, 3),
        "seed": seed,
        "study_seed": stored["seed"],
        "task": space.task,
        "model": space.model,
        "model_args": space.model_args,
        "recipe": space.recipe,
        "input_shape": list(shapes[0]),
        "num_classes": task.num_classes,
        "data_mode": data.mode,
        "environment": studies.environment(device),
    }
    with _folder(out) as partial:
        (partial / USAGE_FILE).write_text(
            json.dumps(usage_record(task, model, test_split), indent=2) + "\n"
        )
        metrics["files"] = _write(
            partial, model, space, trial, epochs, sample, metrics, task.model.fn
        )
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if mlflow_uri:
        from search.trackers.mlflow import log_export

        uid = study.user_attrs.get(studies.UID_ATTR)
        metrics["mlflow_run"], metrics["mlflow_model"] = log_export(
            mlflow_uri, settings.study, url, uid, out, metrics
        )
    return Exported(out, model, metrics, sample)


def _export_own_training(
    settings: ExportSettings, study: optuna.Study, task: Task, trial: FrozenTrial, echo: Any
) -> Exported:
    """A trial of the user's training function, run again with its params: the model the
    function returns beside its value, as a state dict and as the whole module (its class
    pickled by value, so that it loads where the function's code is not)."""
    name = task.train.name
    if settings.mlflow:
        raise SettingsError(
            f"--mlflow: study {settings.study} trains with a function of your own; log its "
            "model from that function (mlflow.pytorch.log_model) instead"
        )
    if not studies.trial_attrs(trial).get("returned_model"):
        raise SettingsError(
            f"study {settings.study}: its training function {name} returns a value, not a "
            f"model, so there is no model to export; return (value, model) from it to export "
            f"one, or take the params: search best {settings.study}"
        )
    seed = studies.trial_attrs(trial)["seed"]
    stored = study.user_attrs[studies.SETTINGS_ATTR]
    echo(f"running {name} again with trial {trial.number}'s params (seed {seed})")
    start = time.perf_counter()
    value, model = run_own_training(task, trial.params, seed, stored["epochs"])
    metric = studies.metric_of(study)
    metrics = {
        "study": settings.study,
        "trial": trial.number,
        "params": trial.params,
        "metric": metric.name,
        "direction": metric.direction,
        f"trial_val_{metric.name}": studies.trial_result(trial, metric),
        f"val_{metric.name}": value,
        "seconds": round(time.perf_counter() - start, 3),
        "seed": seed,
        "train": task.train.reference,
        "files": {"model.pt": "state dict", "module.pt": "torch.load(weights_only=False)"},
        "environment": studies.environment(torch.device("cpu")),
    }
    model = model.to("cpu").eval()
    with _folder(settings.out) as partial:
        torch.save(model.state_dict(), partial / "model.pt")
        with _by_value(type(model), task.train.fn):
            torch.save(model, partial / "module.pt", pickle_module=cloudpickle)
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return Exported(settings.out, model, metrics, ())


@contextlib.contextmanager
def _folder(out: Path) -> Iterator[Path]:
    """A folder to write the export into beside ``out`` (empty or absent, checked before),
    renamed into place when the block ends; removed if it fails."""
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        if out.exists():
            out.rmdir()  # empty, checked above
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


@contextlib.contextmanager
def _by_value(*objects: Any) -> Iterator[None]:
    """Pickle the user's own modules that ``objects`` come from by value (not by a reference to
    a file another machine lacks): the function's, and the model class's."""
    registered = []
    for item in objects:
        module = sys.modules.get(getattr(item, "__module__", "") or "")
        source = getattr(module, "__file__", None)
        if module is None or module.__name__ in ("__main__", "builtins") or source is None:
            continue  # __main__ and a notebook's cells go by value already
        if references.is_library(source) or module in registered:
            continue
        cloudpickle.register_pickle_by_value(module)
        registered.append(module)
    try:
        yield
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def _shapes(task: Task) -> tuple[tuple[int, ...], ...]:
    """Each input's shape (one example's)."""
    shape = task.input_shape
    if shape and isinstance(shape[0], tuple):
        return tuple(tuple(s) for s in shape)
    return (tuple(shape),)


def _raw(inputs: Inputs, model: Prepared) -> Inputs:
    """Inputs as the data holds them, in the dtype the exported model is fed (int64 ids and
    codes, float32 for the rest)."""
    parts = inputs if isinstance(inputs, tuple) else (inputs,)
    raw = tuple(x.to(raw_dtype(how)) for x, how in zip(parts, model.preparation, strict=True))
    return raw if isinstance(inputs, tuple) else raw[0]


def usage_record(task: Task, model: Prepared, test: Any) -> dict[str, Any]:
    """``model.json``: what using the model needs (see `search.exported`)."""
    data = (task.fingerprint or {}).get("data", {})
    parts = test.inputs if isinstance(test.inputs, tuple) else (test.inputs,)
    names = [spec["name"] for spec in data.get("inputs", [])] or [
        "x" if len(parts) == 1 else f"input{i}" for i in range(len(parts))
    ]
    regression = task.scoring.kind == "regression"
    return {
        "kind": task.scoring.kind,
        "metric": task.scoring.metric_name,
        "direction": task.scoring.direction,
        "classes": list(task.classes),
        "outputs": task.num_classes,
        "inputs": [
            {
                "name": name,
                "dtype": str(x.dtype).removeprefix("torch."),
                "shape": list(x.shape[1:]),
                "range": [_number(x.min()), _number(x.max())],  # the scale it takes, as seen
                "prepared": how,
            }
            for name, x, how in zip(names, parts, model.preparation, strict=True)
        ],
        "targets": (
            {"shape": list(test.targets.shape[1:]), "standardized": True} if regression else None
        ),
        "image": data.get("image"),
        "preparation": "inside the model: give it inputs as the data holds them",
    }


def _number(value: torch.Tensor) -> float | int:
    return value.item() if not value.is_floating_point() else round(float(value), 6)


def _write(
    folder: Path,
    model: Prepared,
    space: spaces.Space,
    trial: FrozenTrial,
    epochs: int,
    sample: Inputs,
    metrics: dict[str, Any],
    factory_fn: Any,
) -> dict[str, Any]:
    """Write the model files and config into ``folder`` (and the factory, when it was given
    from Python); reload each and compare its outputs."""
    files: dict[str, Any] = {}
    args = sample if isinstance(sample, tuple) else (sample,)
    classify = not model.regression
    with warnings.catch_warnings(), torch.inference_mode():
        # TorchScript is deprecated in favour of torch.export, but it still loads anywhere.
        warnings.simplefilter("ignore")
        expected = model(*args)
        torch.save(model.state_dict(), folder / "model.pt")
        (folder / "config.toml").write_text(config_toml(space, trial, epochs, metrics))
        if given.is_marker(space.model):
            (folder / FACTORY_FILE).write_bytes(given.dumps(factory_fn))
        files["model.pt"] = _difference(load_model(folder)(*args), expected, classify)

        files["model.torchscript.pt"] = _optional(
            folder / "model.torchscript.pt",
            lambda path: _torchscript(model, args, path),
            expected,
            classify,
            "torch.jit.trace",
        )
        missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            files["model.onnx"] = (
                f"skipped: {', '.join(missing)} not installed (pip install 'search[onnx]')"
            )
        else:
            files["model.onnx"] = _optional(
                folder / "model.onnx",
                lambda path: _onnx(model, args, path),
                expected,
                classify,
                "torch.onnx.export",
            )
    return files


def _optional(
    path: Path, write: Any, expected: torch.Tensor, classify: bool, how: str
) -> dict[str, Any] | str:
    """Write a format the model may not allow (tracing, ONNX); a line saying why it was skipped
    where it does not, or where the file does not reproduce the model."""
    try:
        return _difference(write(path), expected, classify)
    except Exception as e:
        path.unlink(missing_ok=True)
        return f"skipped: {how} could not capture this model: {references.failure_line(e)}"


def _capture_batch(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The batch a format captures the model on: half the one it is checked on, so that a file
    that froze the batch size, or a branch the data took, is caught rather than shipped."""
    return tuple(x[: max(1, len(x) // 2)] for x in args)


def _torchscript(model: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> torch.Tensor:
    torch.jit.trace(model, _capture_batch(args)).save(path)
    return torch.jit.load(path)(*args)


def onnx_names(model: Prepared, count: int) -> tuple[list[str], str]:
    """The ONNX graph's input names (``images`` for one input of images) and output name."""
    if count == 1:
        inputs = ["images" if model.preparation[0] != AS_INTEGERS else "inputs"]
    else:
        inputs = [f"input{i}" for i in range(count)]
    return inputs, "predictions" if model.regression else "logits"


def _onnx(model: Prepared, args: tuple[torch.Tensor, ...], path: Path) -> torch.Tensor:
    import onnxruntime

    batch = torch.export.Dim("batch", min=1)
    inputs, output = onnx_names(model, len(args))
    torch.onnx.export(
        model,
        _capture_batch(args),
        path,
        input_names=inputs,
        output_names=[output],
        dynamic_shapes={"inputs": tuple({0: batch} for _ in args)},
        external_data=False,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: x.numpy() for name, x in zip(inputs, args, strict=True)}
    return torch.from_numpy(session.run(None, feed)[0])


def _difference(got: torch.Tensor, expected: torch.Tensor, classify: bool) -> dict[str, Any]:
    """How far a reloaded file's outputs are from the model's; an error past `TOLERANCE` of
    their scale (or, for logits, where a predicted class differs)."""
    largest = float((got - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if largest > TOLERANCE * scale or (
        classify and not torch.equal(got.argmax(1), expected.argmax(1))
    ):
        raise RuntimeError(
            f"the file's outputs differ from the model's by {largest:.2e} on {len(expected)} test "
            "inputs (Python control flow or NumPy in forward?)"
        )
    return {"max_abs_difference": largest, "checked_on": len(expected)}


def config_toml(
    space: spaces.Space, trial: FrozenTrial, epochs: int, metrics: dict[str, Any]
) -> str:
    """A space file with every param fixed to the trial's value (a one-choice categorical)."""
    metric = metrics["metric"]
    description = (
        f"trial {trial.number} of study {metrics['study']}: val {metric} "
        f"{metrics[f'trial_val_{metric}']:.4f}, test {metric} {metrics[f'test_{metric}']:.4f}"
    )
    table = {**space.absolute_task_table(), "epochs": epochs, "val_fraction": space.val_fraction}
    model_args = table.pop("model_args", {})
    lines = [f"description = {_toml(description)}", "", "[task]"]
    lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    if model_args:
        lines += ["", "[task.model_args]"]
        lines += [f"{key} = {_toml(value)}" for key, value in model_args.items()]
    for name, value in trial.params.items():
        lines += ["", f"[params.{name}]", 'type = "categorical"', f"choices = [{_toml(value)}]"]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)
