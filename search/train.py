"""The training loop. It knows nothing of Optuna: a recipe in, a history out.

On CUDA the step runs under bf16 autocast with channels_last tensors; on the CPU it is plain
float32. The step loop never waits for the device: the loss and the validation metric are summed on
the device and read once per report (each epoch, or k times per epoch), which is also where a
NaN/inf loss is caught. The optimizer and the learning-rate schedule are `torch.optim`'s and
`torch.optim.lr_scheduler`'s, stepped once per batch over the study's epochs, and both are part of
the checkpoint, so a retried trial continues its schedule exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from search import faults
from search.contract import (
    LR_SCHEDULES,
    OPTIMIZERS,
    Checkpoint,
    EpochResult,
    Hyperparameters,
    Inputs,
    TrainingData,
    first_input,
    layout_for,
    model_output,
    rows_of,
)
from search.errors import Diverged, SettingsError
from search.scoring import CLASSIFICATION, Scoring
from search.step import Step, StepReport, resolve_mode

WARMUP_START = 0.01  # warm-up starts at this share of the rate (torchvision's reference scripts')
STEP_MILESTONES = (0.5, 0.75)  # where the step schedule multiplies the rate by step_gamma


def eval_batch_size(device: torch.device) -> int:
    """Examples per evaluation batch. A GPU takes the whole split or most of it at once (one
    launch per layer, one sync). A CPU is faster with batches whose activations stay in its
    caches: 256 evaluates the built-in CNNs 1.3-2.7x as fast as 2,048 on 2 cores (the MLP, in
    under 2 ms either way, 0.8x), and at 4 reports per epoch evaluating makes an unpruned
    digits trial 1.3-1.6x as long as at one."""
    return 256 if device.type == "cpu" else 2048


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
    hp: Hyperparameters,
    parameters: Iterable[nn.Parameter],
    *,
    capture_on: torch.device | None = None,
) -> torch.optim.Optimizer:
    """``hp``'s optimizer; ``capture_on`` a device, one whose step a capture can hold
    (`search.step`): its learning rate a tensor there, which the schedule sets in place, and on
    CUDA a fused or capturable implementation, which never reads a value back to the host."""
    options = _capture_options(hp.optimizer, capture_on)
    lr: float | torch.Tensor = hp.lr
    if capture_on is not None:
        lr = torch.tensor(hp.lr, dtype=torch.float32, device=capture_on)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=lr,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
            nesterov=hp.nesterov and hp.momentum > 0,  # torch refuses Nesterov without momentum
            **options,
        )
    if hp.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=hp.weight_decay, **options)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=hp.weight_decay, **options)
    if hp.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            parameters, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay, **options
        )
    raise ValueError(f"unknown optimizer {hp.optimizer!r}; known: {', '.join(OPTIMIZERS)}")


def _capture_options(optimizer: str, device: torch.device | None) -> dict[str, object]:
    if device is None:
        return {}
    options: dict[str, object] = {}
    if device.type == "cuda":
        # Fused kernels take the rate as a tensor; Adam's and RMSprop's capture checks ask for
        # capturable as well (their step counts stay on the device).
        options.update(
            {"fused": True} if optimizer == "sgd" else
            {"fused": True, "capturable": True} if optimizer in ("adam", "adamw") else
            {"capturable": True}
        )  # fmt: skip
    else:
        options["foreach"] = False  # the compiler takes a tensor rate on the per-tensor path
    return options


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, object]) -> None:
    """Load ``state`` into ``optimizer`` keeping its own implementation (fused, capturable,
    foreach) and its rate's kind: a checkpoint saved by a captured step resumes eagerly, and the
    other way round."""
    kept = [
        {key: group[key] for key in ("lr", "fused", "capturable", "foreach") if key in group}
        for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, kept, strict=True):
        for key, value in own.items():
            if key == "lr":
                rate = float(group["lr"])
                if isinstance(value, torch.Tensor):
                    value.fill_(rate)
                    group["lr"] = value
                else:
                    group["lr"] = rate
            else:
                group[key] = value


def schedule_state(schedule: lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The schedule's state with its rates as plain numbers: a captured step's schedule keeps
    them as tensors, which an eager optimizer cannot take, and either kind loads plain ones."""

    def plain(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.item()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(plain(v) for v in value)
        return value

    return plain(schedule.state_dict())


def make_schedule(
    hp: Hyperparameters, optimizer: torch.optim.Optimizer, total_steps: int
) -> lr_scheduler.LRScheduler:
    """The learning-rate schedule over ``total_steps`` optimizer steps (the study's epochs),
    stepped after each one: a linear warm-up over ``hp.warmup`` of them, then the schedule."""
    total_steps = max(1, total_steps)
    if hp.lr_schedule == "onecycle":
        # One cycle has a warm-up of its own: the rise to lr over pct_start of the steps.
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=hp.lr,
            total_steps=total_steps,
            pct_start=hp.warmup or 0.3,
            cycle_momentum=False,  # the optimizer's momentum stays the sampled one
        )
    warm = min(total_steps - 1, round(hp.warmup * total_steps))
    rest = total_steps - warm
    if hp.lr_schedule == "constant":
        main: lr_scheduler.LRScheduler = lr_scheduler.ConstantLR(optimizer, 1.0, total_iters=0)
    elif hp.lr_schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=rest)
    elif hp.lr_schedule == "step":
        milestones = [max(1, round(share * total_steps) - warm) for share in STEP_MILESTONES]
        main = lr_scheduler.MultiStepLR(optimizer, milestones, gamma=hp.step_gamma)
    else:
        raise ValueError(
            f"unknown lr_schedule {hp.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}"
        )
    if warm == 0:
        return main
    warmup = lr_scheduler.LinearLR(optimizer, WARMUP_START, 1.0, total_iters=warm)
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[warm])


def fit(
    model: nn.Module,
    data: TrainingData,
    hp: Hyperparameters,
    *,
    epochs: int,
    seed: int,
    scoring: Scoring = CLASSIFICATION,
    on_epoch: Callable[[EpochResult], None] | None = None,
    checkpoint: Checkpoint | None = None,
    history: list[EpochResult] | None = None,
    reports_per_epoch: int = 1,
    schedule_epochs: int | None = None,
    save_at: int | None = None,
    step: str = "eager",
    step_report: StepReport | None = None,
) -> list[EpochResult]:
    """Train ``model`` on ``data`` for ``epochs`` epochs; evaluate the validation metric and
    call ``on_epoch`` ``reports_per_epoch`` times per epoch (after equal shares of its steps).

    The learning-rate schedule spans ``schedule_epochs`` (the study's epochs; default
    ``epochs``), so that training fewer epochs follows the first part of the same schedule.
    ``on_epoch`` may raise to stop training (the objective raises ``optuna.TrialPruned``).
    With a ``checkpoint``, training continues from the state it holds (passing each restored
    report to ``on_epoch`` first) and saves its state after every epoch, before ``on_epoch``;
    also at report ``save_at`` (a step, 1.. epochs × ``reports_per_epoch``) inside an epoch,
    where a trial pauses: its state then holds the epoch's data order, and training continues
    from that step exactly, drawing the epoch's batches up to it without training on them.
    Reports are appended to ``history`` (returned), which the caller keeps even when training
    stops with an exception. Evaluating draws no random numbers, so the epochs train alike
    however often they are reported. ``step`` (`search.step.STEP_MODES`) runs each batch's step
    eagerly or replays a capture of it; ``step_report`` is told how it ran.

    Raises:
        Diverged: the mean training loss since a report was NaN or infinite.
    """
    device = data.device
    if hp.batch_size > data.n_train:
        raise ValueError(f"batch_size {hp.batch_size} exceeds the {data.n_train} training examples")
    steps = data.n_train // hp.batch_size
    report_after = report_points(steps, reports_per_epoch)
    model.to(device=device, memory_format=layout_for(device))
    mode = resolve_mode(step, device)
    optimizer = make_optimizer(
        hp, model.parameters(), capture_on=device if mode == "captured" else None
    )
    schedule = make_schedule(hp, optimizer, steps * max(epochs, schedule_epochs or epochs))
    loss_of = scoring.criterion(hp)
    augment = data.augment if hp.augment is None else hp.augment
    parameters = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator(device=device).manual_seed(seed)
    eval_batch = eval_batch_size(device)
    history = [] if history is None else history
    state = checkpoint.load() if checkpoint is not None else None
    skip = 0  # batches of the first epoch already trained on, when it resumes inside an epoch
    if state is not None:
        model.load_state_dict(state["model"])
        restore_optimizer(optimizer, state["optimizer"])
        if "schedule" in state:  # checkpoints from before schedules ran at a constant rate
            schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"].to(generator.device))
        skip = state.get("epoch_steps", 0)
        torch.set_rng_state(state["torch_rng"])
        restored = [EpochResult.from_row(row) for row in state["history"]]
        history.extend(restored)
        for result in restored:  # the caller records them again (a retry is a new trial)
            if on_epoch is not None:
                on_epoch(result)
    faults.check_oom(hp.batch_size)

    def body(x: Inputs, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, cache=mode != "captured"):  # a graph must not keep autocast's casts
            loss = loss_of(model_output(model, x), y)
        loss.backward()
        if hp.grad_clip > 0:
            nn.utils.clip_grad_norm_(parameters, hp.grad_clip)
        optimizer.step()
        return loss.detach().float()

    train_step = Step(body, device, mode)
    try:
        # A retry starts after the last whole epoch saved, a paused trial after the step it paused at.
        for epoch in range(len(history) // reports_per_epoch + 1, epochs + 1):
            start = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device)
            done = 0  # steps since the last report
            # What draws this epoch's order and augmentation, kept only where a pause may save it.
            epoch_order = generator.get_state() if save_at is not None else None
            for step, (x, y) in enumerate(data.batches(hp.batch_size, generator, augment), 1):
                if step <= skip:
                    continue  # drawn as before the pause, so that the rest of the epoch is the same
                loss_sum += train_step(x, y)
                schedule.step()
                done += 1
                if step not in report_after:
                    continue
                train_loss = (loss_sum / done).item()  # the one host sync of the report's training
                train_seconds = time.perf_counter() - start
                if not math.isfinite(train_loss):
                    raise Diverged(
                        in_epochs(epoch, report_after[step][0], reports_per_epoch), train_loss
                    )
                value = evaluate_batches(
                    model, data.val_batches(eval_batch), scoring, targets=data.targets
                )
                model.train()
                seconds = time.perf_counter() - start
                group = report_after[step]  # several reports of one evaluation: a short epoch
                results = [
                    EpochResult(
                        epoch=in_epochs(epoch, report, reports_per_epoch),
                        train_loss=train_loss,
                        value=value,
                        # A second report of the same evaluation cost nothing more.
                        seconds=seconds if report == group[0] else 0.0,
                        images_per_second=done * hp.batch_size / train_seconds,
                        step=(epoch - 1) * reports_per_epoch + report,
                    )
                    for report in group
                ]
                ends_epoch = group[-1] == reports_per_epoch
                for i, result in enumerate(results):
                    history.append(result)
                    pausing = result.step == save_at
                    if checkpoint is not None and (pausing or (ends_epoch and i == len(group) - 1)):
                        saved = {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "schedule": schedule_state(schedule),
                            "generator": generator.get_state() if ends_epoch else epoch_order,
                            "torch_rng": torch.get_rng_state(),
                            # A pause keeps the rest of this evaluation's reports, which follow it.
                            "history": [dataclasses.asdict(r) for r in history + results[i + 1 :]],
                        }
                        if not ends_epoch:
                            saved["epoch_steps"] = step
                        checkpoint.save(saved)
                    if on_epoch is not None:
                        on_epoch(result)
                start = time.perf_counter()
                loss_sum = torch.zeros((), device=device)
                done = 0
            skip = 0
    finally:
        if step_report is not None:
            step_report.ran, step_report.fallback = train_step.ran, train_step.fallback
    return history


def report_points(steps: int, reports_per_epoch: int) -> dict[int, list[int]]:
    """After which step of an epoch of ``steps`` each report comes (1-based): equal shares, the
    last at the epoch's end. An epoch of fewer steps than reports makes several reports of one
    evaluation."""
    if reports_per_epoch < 1:
        raise ValueError(f"reports_per_epoch must be at least 1, got {reports_per_epoch}")
    report_after: dict[int, list[int]] = {}
    for report in range(1, reports_per_epoch + 1):
        at = max(1, round(steps * report / reports_per_epoch))
        report_after.setdefault(at, []).append(report)
    return report_after


def in_epochs(epoch: int, report: int, reports_per_epoch: int) -> float:
    """Report ``report`` (1-based) of ``epoch``, in epochs: whole when reports are per epoch."""
    value = round(epoch - 1 + report / reports_per_epoch, 6)
    return int(value) if value.is_integer() else value


def evaluate(
    model: nn.Module,
    x: Inputs,
    y: torch.Tensor,
    batch_size: int | None = None,
    scoring: Scoring = CLASSIFICATION,
) -> float:
    """The metric of ``model`` on ``x``/``y`` (already on its device), one sync."""
    batch_size = batch_size or eval_batch_size(first_input(x).device)
    return evaluate_batches(
        model,
        (
            (rows_of(x, slice(s, s + batch_size)), y[s : s + batch_size])
            for s in range(0, len(y), batch_size)
        ),
        scoring,
    )


@torch.inference_mode()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple[Inputs, torch.Tensor]],
    scoring: Scoring = CLASSIFICATION,
    targets: object | None = None,
) -> float:
    """The validation metric of ``model`` over ``batches`` of inputs and targets on its device,
    one sync. ``targets`` (a `search.tasks.scaling.TargetScale`) maps standardized outputs back
    to the targets' own units first."""
    model.eval()
    metric = None
    for x, y in batches:
        if metric is None:
            metric = scoring.new_metric(y.device)
        with autocast(y.device):
            output = model_output(model, x)
        if targets is not None:
            output = targets.restore(output.float())
        metric.update(output, y)
    return metric.compute() if metric is not None else 0.0


def autocast(device: torch.device, cache: bool = True) -> torch.autocast:
    return torch.autocast(
        device_type=device.type,
        dtype=torch.bfloat16,
        enabled=device.type == "cuda",
        cache_enabled=cache,
    )
