"""`search export`: retrain a trial's configuration, score it on the test set, write a model to ship.

The directory holds:

- ``model.pt``: the state dict (loadable with ``weights_only=True``; `load_model` rebuilds it);
- ``config.toml``: a space file with the task, the model (a family, or the user's factory by an
  absolute reference) and each param fixed to the trial's value, runnable again with
  ``search run --space DIR/config.toml``;
- ``metrics.json``: validation and test accuracy, epochs, seconds, seeds, input shape, classes,
  device and versions;
- ``model.torchscript.pt`` where ``torch.jit.trace`` captures the model and, with the ``onnx`` extra
  installed, ``model.onnx`` where the exporter does; a model that they cannot capture (a user's,
  with Python control flow) gets a line saying why the file was skipped.

Every model file takes raw inputs (the dataset's own scale): normalization with the training
statistics is part of the model. Each exported file is loaded back and run on a test batch before
the directory appears, and the largest difference from the trained model is recorded. The directory
is written beside its final path and renamed into place, so an interrupted export leaves nothing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from search import references, retrain, runner, spaces, tasks, trackers
from search import study as studies
from search.errors import SettingsError, StorageError
from search.tasks import factory, placement, resolve
from search.train import pick_device

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
TOLERANCE = 1e-4  # largest logit difference allowed between the model and a file it was saved to


class Normalized(nn.Module):
    """A trained model with its input normalization, so it takes the dataset's raw values."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.detach().clone())  # shaped (1, C, 1, ...) to broadcast
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


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
    mlflow: str | None = None  # also log the model, its accuracy and files to this tracking URI


@dataclass(frozen=True)
class Exported:
    out: Path
    model: nn.Module  # the trained model, normalization included, on the CPU, in eval mode
    metrics: dict[str, Any]
    sample: torch.Tensor  # raw test inputs the exported files were checked on


def chosen_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number``, or the study's best (for several objectives, the most accurate on the
    Pareto front)."""
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        if not 0 <= number < len(trials):
            raise SettingsError(
                f"--trial {number}: study {study.study_name} has trials 0..{len(trials) - 1}"
            )
        trial = trials[number]
        if studies.trial_result(trial) is None or trial.state not in (
            TrialState.COMPLETE,
            TrialState.PRUNED,
        ):
            raise SettingsError(f"--trial {number}: it is {trial.state.name}, with no result")
        return trial
    best = studies.most_accurate(study)
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
    trial = chosen_trial(study, settings.trial)
    task = resolve.resolve(space, data_dir=settings.data_dir, download=settings.download)
    runner.check_unchanged(study, task, "its trials cannot be reproduced on what is there now")
    device = pick_device(settings.device)
    data = placement.load_data(
        task,
        space,
        seed=stored["seed"],
        device=device,
        data_dir=settings.data_dir,
        download=settings.download,
    )
    curve = studies.epoch_accuracies(trial)
    best_epoch = max(curve, key=lambda epoch: (curve[epoch], -epoch))
    # Whole epochs: a best report inside an epoch is found again by reporting as the trial did.
    epochs = settings.epochs or math.ceil(best_epoch if settings.full_train else max(curve))
    if settings.full_train:
        data = data.with_validation_in_training()
    seed = studies.trial_attrs(trial).get("seed", studies.trial_seed(stored["seed"], trial.number))
    echo(
        f"retraining trial {trial.number} of {settings.study} for {epochs} epochs on {device}"
        + (" (train + validation)" if settings.full_train else "")
    )
    start = time.perf_counter()
    again = retrain.retrain(
        task,
        data,
        trial.params,
        seed=seed,
        epochs=epochs,
        keep="last" if settings.full_train else "best",
        reports_per_epoch=studies.reports_per_epoch(trial),
    )
    seconds = time.perf_counter() - start
    test_split = task.load(settings.data_dir, settings.download, False)
    test_accuracy = retrain.test_accuracy(again.model, data, test_split)
    model = Normalized(again.model, data.mean, data.std).to("cpu").eval()
    sample = test_split.images[:64].float()

    metrics = {
        "study": settings.study,
        "trial": trial.number,
        "params": trial.params,
        "trial_val_accuracy": studies.trial_result(trial),
        "val_accuracy": None if settings.full_train else again.val_accuracy,
        "test_accuracy": test_accuracy,
        "epochs": epochs,
        "best_epoch": None if settings.full_train else again.best_epoch,
        "full_train": settings.full_train,
        "seconds": round(seconds, 3),
        "seed": seed,
        "study_seed": stored["seed"],
        "task": space.task,
        "model": space.model,
        "model_args": space.model_args,
        "input_shape": list(task.input_shape),
        "num_classes": task.num_classes,
        "data_mode": data.mode,
        "environment": studies.environment(device),
    }
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        metrics["files"] = _write(partial, model, space, trial, epochs, sample, metrics)
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if mlflow_uri:
        from search.trackers.mlflow import log_export

        uid = study.user_attrs.get(studies.UID_ATTR)
        metrics["mlflow_run"], metrics["mlflow_model"] = log_export(
            mlflow_uri, settings.study, url, uid, out, metrics
        )
    return Exported(out, model, metrics, sample)


def _write(
    folder: Path,
    model: Normalized,
    space: spaces.Space,
    trial: FrozenTrial,
    epochs: int,
    sample: torch.Tensor,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Write the model files and config into ``folder``; reload each and compare its logits."""
    files: dict[str, Any] = {}
    with warnings.catch_warnings(), torch.inference_mode():
        # TorchScript is deprecated in favour of torch.export, but it still loads anywhere.
        warnings.simplefilter("ignore")
        expected = model(sample)
        torch.save(model.state_dict(), folder / "model.pt")
        (folder / "config.toml").write_text(config_toml(space, trial, epochs, metrics))
        # What `load_model` rebuilds from; written again below with these files' checks.
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        files["model.pt"] = _difference(load_model(folder)(sample), expected)

        files["model.torchscript.pt"] = _optional(
            folder / "model.torchscript.pt",
            lambda path: _torchscript(model, sample, path),
            expected,
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
                lambda path: _onnx(model, sample, path),
                expected,
                "torch.onnx.export",
            )
    return files


def _optional(path: Path, write: Any, expected: torch.Tensor, how: str) -> dict[str, Any] | str:
    """Write a format the model may not allow (tracing, ONNX); a line saying why it was skipped
    where it does not, or where the file does not reproduce the model."""
    try:
        return _difference(write(path), expected)
    except Exception as e:
        path.unlink(missing_ok=True)
        return f"skipped: {how} could not capture this model: {references.failure_line(e)}"


def _capture_batch(sample: torch.Tensor) -> torch.Tensor:
    """The batch a format captures the model on: half the one it is checked on, so that a file
    that froze the batch size, or a branch the data took, is caught rather than shipped."""
    return sample[: max(1, len(sample) // 2)]


def _torchscript(model: nn.Module, sample: torch.Tensor, path: Path) -> torch.Tensor:
    torch.jit.trace(model, _capture_batch(sample)).save(path)
    return torch.jit.load(path)(sample)


def _onnx(model: nn.Module, sample: torch.Tensor, path: Path) -> torch.Tensor:
    import onnxruntime

    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        model,
        (_capture_batch(sample),),
        path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
        external_data=False,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": sample.numpy()})[0])


def _difference(got: torch.Tensor, expected: torch.Tensor) -> dict[str, Any]:
    """How far a reloaded file's logits are from the model's; an error past `TOLERANCE`."""
    largest = float((got - expected).abs().max())
    if largest > TOLERANCE or not torch.equal(got.argmax(1), expected.argmax(1)):
        raise RuntimeError(
            f"the file's logits differ from the model's by {largest:.2e} on {len(expected)} test "
            "inputs (Python control flow or NumPy in forward?)"
        )
    return {"max_abs_logit_difference": largest, "checked_on": len(expected)}


def load_model(folder: Path) -> Normalized:
    """The model saved in ``folder/model.pt``, rebuilt by its factory from the folder's
    ``config.toml`` (model, fixed params) and ``metrics.json`` (input shape, classes)."""
    config = tomllib.loads((folder / "config.toml").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    params = {name: spec["choices"][0] for name, spec in config["params"].items()}
    task = config["task"]
    made = factory.resolve(task["model"], task.get("model_args", {}), folder)
    input_shape = tuple(metrics["input_shape"])
    broadcast = (1, input_shape[0], *[1] * (len(input_shape) - 1))
    # Exports written before user tasks existed name a registered task and no class count.
    num_classes = metrics.get("num_classes") or tasks.get(task["name"]).num_classes
    model = Normalized(
        made.build(params, input_shape, num_classes),
        torch.zeros(broadcast),
        torch.ones(broadcast),
    )
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True, map_location="cpu"))
    return model.eval()


def config_toml(
    space: spaces.Space, trial: FrozenTrial, epochs: int, metrics: dict[str, Any]
) -> str:
    """A space file with every param fixed to the trial's value (a one-choice categorical)."""
    description = (
        f"trial {trial.number} of study {metrics['study']}: val accuracy "
        f"{metrics['trial_val_accuracy']:.4f}, test accuracy {metrics['test_accuracy']:.4f}"
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
