"""The training loop. It knows nothing of Optuna: plain hyperparameters in, a history out.

On CUDA the step runs under bf16 autocast with channels_last tensors; on the CPU it is plain
float32. The step loop never waits for the device: the loss is summed on the device and read once
per report (each epoch, or k times per epoch), which is also where a NaN/inf loss is caught.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from search import faults
from search.errors import Diverged, SettingsError
from search.tasks.data import layout_for

OPTIMIZERS = ("sgd", "adam", "rmsprop")


def eval_batch_size(device: torch.device) -> int:
    """Examples per evaluation batch. A GPU takes the whole split or most of it at once (one
    launch per layer, one sync). A CPU is faster with batches whose activations stay in its
    caches: 256 evaluates the built-in CNNs 1.3-2.7x as fast as 2,048 on 2 cores (the MLP, in
    under 2 ms either way, 0.8x), and at 4 reports per epoch evaluating makes an unpruned
    digits trial 1.3-1.6x as long as at one."""
    return 256 if device.type == "cpu" else 2048


@dataclass(frozen=True)
class Hyperparameters:
    """What the loop needs; a space samples some of these, the rest keep these defaults.

    Attributes:
        lr: learning rate.
        batch_size: examples per step (the last partial batch of an epoch is dropped).
        optimizer: one of ``sgd``, ``adam``, ``rmsprop``.
        momentum: for ``sgd`` and ``rmsprop``; ignored by ``adam``.
        weight_decay: L2 penalty, as the optimizers apply it.
    """

    lr: float = 1e-3
    batch_size: int = 128
    optimizer: str = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0


LOOP_PARAMS = tuple(f.name for f in dataclasses.fields(Hyperparameters))


def split_params(params: dict[str, Any]) -> tuple[Hyperparameters, dict[str, Any]]:
    """A trial's sampled params split in two: what the training loop takes, and everything else
    (depth included), which goes to the model factory by keyword."""
    loop = {k: v for k, v in params.items() if k in LOOP_PARAMS}
    return Hyperparameters(**loop), {k: v for k, v in params.items() if k not in LOOP_PARAMS}


class TrainingData(Protocol):
    """What `fit` trains on: device-resident data (`search.tasks.data.DeviceData`) or data
    streamed from the host (`search.tasks.streaming.StreamingData`), batches on ``device``."""

    @property
    def device(self) -> torch.device: ...

    @property
    def n_train(self) -> int: ...

    def batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    # What retraining, export and the benchmarks use besides `fit`:
    mode: str  # "resident" or "stream", recorded on each trial
    mean: torch.Tensor  # per-channel training statistics, shaped to broadcast over a batch
    std: torch.Tensor

    def split_batches(
        self, split: Any, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def examples(self, n: int) -> torch.Tensor: ...

    def with_validation_in_training(self) -> TrainingData: ...


class Checkpoint(Protocol):
    """Where `fit` keeps its state between epochs (see `search.checkpoint.FileCheckpoint`)."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class EpochResult:
    """One report: validation accuracy after an epoch, or after a fraction of one when `fit`
    reports k times per epoch (then ``epoch`` is 1/k, 2/k, ... and ``step`` counts reports)."""

    epoch: float  # 1-based, in epochs: a whole number when reports come once per epoch
    train_loss: float  # mean over the steps since the previous report
    val_accuracy: float
    seconds: float  # wall time since the previous report, training and evaluation
    images_per_second: float  # training throughput
    step: int = 0  # 1-based report count, what the pruner sees (0: a row saved without one)

    def __post_init__(self) -> None:
        if self.step == 0:  # a checkpoint row from before reports could come more often
            object.__setattr__(self, "step", round(self.epoch))


def pick_device(name: str | None = None) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:1`` ...) checked against this machine, or the best one."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SettingsError(f"--device {name!r}: not a device name (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SettingsError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise SettingsError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def make_optimizer(
    hp: Hyperparameters, parameters: Iterable[nn.Parameter]
) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
    if hp.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            parameters, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
    raise ValueError(f"unknown optimizer {hp.optimizer!r}; known: {', '.join(OPTIMIZERS)}")


def fit(
    model: nn.Module,
    data: TrainingData,
    hp: Hyperparameters,
    *,
    epochs: int,
    seed: int,
    on_epoch: Callable[[EpochResult], None] | None = None,
    checkpoint: Checkpoint | None = None,
    history: list[EpochResult] | None = None,
    reports_per_epoch: int = 1,
) -> list[EpochResult]:
    """Train ``model`` on ``data`` for ``epochs`` epochs; evaluate and call ``on_epoch``
    ``reports_per_epoch`` times per epoch (after equal shares of its steps).

    ``on_epoch`` may raise to stop training (the objective raises ``optuna.TrialPruned``).
    With a ``checkpoint``, training continues from the state it holds (passing each restored
    report to ``on_epoch`` first) and saves its state after every epoch, before ``on_epoch``.
    Reports are appended to ``history`` (returned), which the caller keeps even when training
    stops with an exception. Evaluating draws no random numbers, so the epochs train alike
    however often they are reported.

    Raises:
        Diverged: the mean training loss since a report was NaN or infinite.
    """
    device = data.device
    if hp.batch_size > data.n_train:
        raise ValueError(f"batch_size {hp.batch_size} exceeds the {data.n_train} training examples")
    steps = data.n_train // hp.batch_size
    if reports_per_epoch < 1:
        raise ValueError(f"reports_per_epoch must be at least 1, got {reports_per_epoch}")
    # After which step of an epoch each report comes: equal shares, the last at the epoch's end.
    # An epoch of fewer steps than reports makes several reports of one evaluation.
    report_after: dict[int, list[int]] = {}
    for report in range(1, reports_per_epoch + 1):
        at = max(1, round(steps * report / reports_per_epoch))
        report_after.setdefault(at, []).append(report)
    model.to(device=device, memory_format=layout_for(device))
    optimizer = make_optimizer(hp, model.parameters())
    generator = torch.Generator(device=device).manual_seed(seed)
    eval_batch = eval_batch_size(device)
    history = [] if history is None else history
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].to(generator.device))
        torch.set_rng_state(state["torch_rng"])
        restored = [EpochResult(**row) for row in state["history"]]
        history.extend(restored)
        for result in restored:  # the caller records them again (a retry is a new trial)
            if on_epoch is not None:
                on_epoch(result)
    faults.check_oom(hp.batch_size)
    # A checkpoint holds whole epochs only: a retry starts after the last one it saved.
    for epoch in range(len(history) // reports_per_epoch + 1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        done = 0  # steps since the last report
        for step, (x, y) in enumerate(data.batches(hp.batch_size, generator), 1):
            with _autocast(device):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().float()
            done += 1
            if step not in report_after:
                continue
            train_loss = (loss_sum / done).item()  # the one host sync of the report's training
            train_seconds = time.perf_counter() - start
            if not math.isfinite(train_loss):
                raise Diverged(
                    _in_epochs(epoch, report_after[step][0], reports_per_epoch), train_loss
                )
            val_accuracy = evaluate_batches(model, data.val_batches(eval_batch))
            model.train()
            seconds = time.perf_counter() - start
            for report in report_after[step]:
                result = EpochResult(
                    epoch=_in_epochs(epoch, report, reports_per_epoch),
                    train_loss=train_loss,
                    val_accuracy=val_accuracy,
                    seconds=seconds,
                    images_per_second=done * hp.batch_size / train_seconds,
                    step=(epoch - 1) * reports_per_epoch + report,
                )
                seconds = 0.0  # a second report of the same evaluation cost nothing more
                history.append(result)
                if checkpoint is not None and report == reports_per_epoch:
                    checkpoint.save(
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "generator": generator.get_state(),
                            "torch_rng": torch.get_rng_state(),
                            "history": [dataclasses.asdict(r) for r in history],
                        }
                    )
                if on_epoch is not None:
                    on_epoch(result)
            start = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            done = 0
    return history


def _in_epochs(epoch: int, report: int, reports_per_epoch: int) -> float:
    """Report ``report`` (1-based) of ``epoch``, in epochs: whole when reports are per epoch."""
    value = round(epoch - 1 + report / reports_per_epoch, 6)
    return int(value) if value.is_integer() else value


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
) -> float:
    """Accuracy of ``model`` on ``x``/``y`` (already on its device), one sync."""
    batch_size = batch_size or eval_batch_size(x.device)
    return evaluate_batches(
        model,
        ((x[s : s + batch_size], y[s : s + batch_size]) for s in range(0, len(y), batch_size)),
    )


@torch.inference_mode()
def evaluate_batches(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> float:
    """Accuracy of ``model`` over ``batches`` of inputs and labels on its device, one sync."""
    model.eval()
    correct, total = None, 0
    for x, y in batches:
        with _autocast(x.device):
            logits = model(x)
        hits = (logits.argmax(dim=1) == y).sum()
        correct = hits if correct is None else correct + hits
        total += len(y)
    return correct.item() / total if total else 0.0


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )
