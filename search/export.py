"""`search export`: retrain a trial's configuration, score it on the test set, write a model to ship.

The directory holds:

- ``model.pt``: the state dict (loadable with ``weights_only=True``; `load_model` rebuilds it);
- ``config.toml``: a space file with the task, the model and each param fixed to the trial's value,
  runnable again with ``search run --space DIR/config.toml``;
- ``metrics.json``: validation and test accuracy, epochs, seconds, seeds, device and versions;
- ``model.torchscript.pt`` and, with the ``onnx`` extra installed, ``model.onnx``.

Every model file takes raw inputs (the dataset's own scale): normalization with the training
statistics is part of the model. Each exported file is loaded back and run on a test batch before
the directory appears, and the largest difference from the trained model is recorded. The directory
is written beside its final path and renamed into place, so an interrupted export leaves nothing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from search import retrain, spaces, tasks, workers
from search import study as studies
from search.errors import SettingsError, StorageError
from search.objective import hyperparameters
from search.tasks import models
from search.train import pick_device

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
TOLERANCE = 1e-4  # largest logit difference allowed between the model and a file it was saved to


class Normalized(nn.Module):
    """A trained model with its input normalization, so it takes the dataset's raw values."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", std.detach().reshape(1, -1, 1, 1).clone())

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
    stored = study.user_attrs.get(studies.SETTINGS_ATTR)
    if stored is None or studies.SPACE_ATTR not in study.user_attrs:
        raise StorageError(f"study {settings.study} was not created by search run")
    space = spaces.from_data(
        study.user_attrs[studies.SPACE_ATTR], name=stored["space_name"], source=settings.study
    )
    trial = chosen_trial(study, settings.trial)
    task = tasks.get(space.task)
    device = pick_device(settings.device)
    data = workers.load_data(
        task, space, settings.data_dir, settings.download, stored["seed"], device
    )
    curve = studies.epoch_accuracies(trial)
    best_epoch = max(curve, key=lambda epoch: (curve[epoch], -epoch))
    epochs = settings.epochs or (best_epoch if settings.full_train else max(curve))
    if settings.full_train:
        data = data.with_validation_in_training()
    seed = trial.user_attrs.get("seed", studies.trial_seed(stored["seed"], trial.number))
    echo(
        f"retraining trial {trial.number} of {settings.study} for {epochs} epochs on {device}"
        + (" (train + validation)" if settings.full_train else "")
    )
    start = time.perf_counter()
    again = retrain.retrain(
        space,
        task,
        data,
        trial.params,
        seed=seed,
        epochs=epochs,
        keep="last" if settings.full_train else "best",
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
        "input_shape": list(task.input_shape),
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
        files["model.pt"] = _difference(load_model(folder, space, trial.params)(sample), expected)
        (folder / "config.toml").write_text(config_toml(space, trial, epochs, metrics))

        torch.jit.trace(model, sample).save(folder / "model.torchscript.pt")
        files["model.torchscript.pt"] = _difference(
            torch.jit.load(folder / "model.torchscript.pt")(sample), expected
        )

        missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            files["model.onnx"] = (
                f"skipped: {', '.join(missing)} not installed (pip install 'search[onnx]')"
            )
        else:
            onnx = _onnx(model, sample, folder / "model.onnx")
            files["model.onnx"] = _difference(onnx, expected)
    return files


def _onnx(model: nn.Module, sample: torch.Tensor, path: Path) -> torch.Tensor:
    import onnxruntime

    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        model,
        (sample,),
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
        raise RuntimeError(f"an exported file disagrees with the model by {largest:.2e}")
    return {"max_abs_logit_difference": largest, "checked_on": len(expected)}


def load_model(folder: Path, space: spaces.Space, params: dict[str, Any]) -> Normalized:
    """The model saved in ``folder/model.pt``, rebuilt from its space and params."""
    task = tasks.get(space.task)
    _, depth = hyperparameters(params)
    channels = task.input_shape[0]
    model = Normalized(
        models.build(space.model, depth, task.input_shape, task.num_classes),
        torch.zeros(channels),
        torch.ones(channels),
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
    lines = [
        f"description = {_toml(description)}",
        "",
        "[task]",
        f'name = "{space.task}"',
        f'model = "{space.model}"',
        f"epochs = {epochs}",
        f"val_fraction = {space.val_fraction!r}",
    ]
    for name, value in trial.params.items():
        lines += ["", f"[params.{name}]", 'type = "categorical"', f"choices = [{_toml(value)}]"]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
