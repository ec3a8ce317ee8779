"""Several trials trained as one model: configurations that share every shape, one step for all.

A small model leaves a GPU idle between its kernels; K of them side by side fill it, as HFTA
(MLSys 2021) showed. Here the K members of a group keep their own `nn.Module`, optimizer,
learning-rate schedule, loss (label smoothing), clipping, augmentation, seeded data order and
reports, exactly as `search.train.fit` would give each alone; only the forward and backward pass
run once for all of them: `torch.func.functional_call` under `torch.vmap` over the members'
parameters stacked on a new first dimension, on their K batches stacked alike. Gradients flow back
through the stack into each member's own parameters, and each member's own `torch.optim`
optimizer steps them. Normalization statistics live in one stacked buffer per name, each member's
module holding a view of its row, so that the batched forward updates them in place.

A member that its ``on_epoch`` stops (pruned) or whose loss diverges leaves the group at that
report; the rest go on in a group rebuilt without it. Every member saves its own checkpoint in
`fit`'s format after every epoch, so that a retry of a member whose worker died continues alone.

This module knows nothing of Optuna: `search.fused_trials` forms the groups from a study's trials.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from search import faults
from search.contract import (
    Checkpoint,
    EpochResult,
    Hyperparameters,
    Inputs,
    TrainingData,
    layout_for,
)
from search.errors import Diverged
from search.scoring import CLASSIFICATION, Scoring
from search.step import Step, StepReport, resolve_mode
from search.train import (
    autocast,
    eval_batch_size,
    in_epochs,
    make_optimizer,
    make_schedule,
    report_points,
    schedule_state,
)


@dataclass
class Member:
    """One configuration of a group: its model (built and seeded by the caller), recipe, data
    seed and reports; ``stopped`` is what ended it early (`optuna.TrialPruned`, `Diverged`)."""

    model: nn.Module
    hp: Hyperparameters
    seed: int
    on_epoch: Callable[[EpochResult], None] | None = None
    checkpoint: Checkpoint | None = None
    history: list[EpochResult] = field(default_factory=list)
    stopped: Exception | None = None


def shape_key(model: nn.Module, hp: Hyperparameters) -> tuple[object, ...]:
    """What members of one group share: the batch size and every parameter's and buffer's name,
    shape and type."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return (hp.batch_size, type(model), *((n, tuple(t.shape), t.dtype) for n, t in tensors))


def fit_fused(
    members: list[Member],
    data: TrainingData,
    *,
    epochs: int,
    scoring: Scoring = CLASSIFICATION,
    reports_per_epoch: int = 1,
    step: str = "eager",
) -> StepReport:
    """Train ``members`` together on ``data`` for ``epochs`` epochs, reporting to each one's
    ``on_epoch`` ``reports_per_epoch`` times per epoch, as `search.train.fit` trains each alone.

    An exception from a member's ``on_epoch``, or a NaN/inf loss of its own, stops that member
    (``Member.stopped``) and no other. Any other error (out of memory) stops the group and is
    raised. Returns how the steps ran (the last group's, after members left).
    """
    if not members:
        return StepReport()
    device = data.device
    batch_size = members[0].hp.batch_size
    key = shape_key(members[0].model, members[0].hp)
    for member in members[1:]:
        if shape_key(member.model, member.hp) != key:
            raise ValueError("fused members must share the batch size and every model shape")
    if batch_size > data.n_train:
        raise ValueError(f"batch_size {batch_size} exceeds the {data.n_train} training examples")
    steps = data.n_train // batch_size
    report_after = report_points(steps, reports_per_epoch)
    mode = resolve_mode(step, device)
    report = StepReport()
    if mode == "captured" and device.type != "cuda":
        # torch.compile guards on each optimizer's settings: it would recompile per member.
        mode, report.fallback = "eager", "fused steps are captured on CUDA only"
    trainers = [_Trainer(m, data, scoring, steps * epochs, mode) for m in members]
    faults.check_oom(batch_size)  # the tests' out-of-memory hook, as `fit` has it
    group = _Group(trainers, device, mode)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        group.train()
        loss_sum = torch.zeros(len(group.trainers), device=device)
        done = 0
        streams = [t.batches(batch_size) for t in group.trainers]
        for step_number in range(1, steps + 1):
            x, y = _stacked([next(s) for s in streams])
            loss_sum += group.step(x, y)
            for trainer in group.trainers:
                trainer.schedule.step()
            done += 1
            if step_number not in report_after:
                continue
            losses = (loss_sum / done).tolist()  # the one host sync of the report's training
            train_seconds = time.perf_counter() - start
            values = group.evaluate(data, scoring)
            seconds = time.perf_counter() - start
            share = len(group.trainers)  # each member's share of the group's time
            reports = report_after[step_number]
            for trainer, loss, value in zip(group.trainers, losses, values, strict=True):
                trainer.report(
                    epoch,
                    reports,
                    reports_per_epoch,
                    loss,
                    value,
                    seconds / share,
                    done * batch_size * share / train_seconds,
                    ends_epoch=reports[-1] == reports_per_epoch,
                )
            keep = [i for i, t in enumerate(group.trainers) if t.member.stopped is None]
            if len(keep) < len(group.trainers):
                _record(report, group)
                if not keep:
                    return report
                streams = [streams[i] for i in keep]
                loss_sum = torch.zeros(len(keep), device=device)
                group = _Group([group.trainers[i] for i in keep], device, mode)
                group.train()
            else:
                loss_sum.zero_()
            start = time.perf_counter()
            done = 0
    _record(report, group)
    return report


def _record(report: StepReport, group: _Group) -> None:
    """How ``group``'s steps ran, into ``report`` (a reason given before it stays)."""
    report.ran, fallback = group.ran
    report.fallback = report.fallback or fallback


class _Trainer:
    """One member's optimizer, schedule, loss, data order and reports."""

    def __init__(
        self, member: Member, data: TrainingData, scoring: Scoring, total_steps: int, mode: str
    ) -> None:
        hp = member.hp
        device = data.device
        self.member = member
        self.data = data
        member.model.to(device=device, memory_format=layout_for(device))
        self.parameters = [p for p in member.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(
            hp, member.model.parameters(), capture_on=device if mode == "captured" else None
        )
        self.schedule = make_schedule(hp, self.optimizer, total_steps)
        self.loss_of = scoring.criterion(hp)
        self.augment = data.augment if hp.augment is None else hp.augment
        self.generator = torch.Generator(device=device).manual_seed(member.seed)

    def batches(self, batch_size: int) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """This member's batches of one epoch, drawn from its own generator as `fit` draws them."""
        return self.data.batches(batch_size, self.generator, self.augment)

    def report(
        self,
        epoch: int,
        reports: list[int],
        reports_per_epoch: int,
        train_loss: float,
        value: float,
        seconds: float,
        images_per_second: float,
        *,
        ends_epoch: bool,
    ) -> None:
        member = self.member
        if not math.isfinite(train_loss):
            member.stopped = Diverged(in_epochs(epoch, reports[0], reports_per_epoch), train_loss)
            return
        for i, report in enumerate(reports):
            result = EpochResult(
                epoch=in_epochs(epoch, report, reports_per_epoch),
                train_loss=train_loss,
                value=value,
                seconds=seconds if i == 0 else 0.0,
                images_per_second=images_per_second,
                step=(epoch - 1) * reports_per_epoch + report,
            )
            member.history.append(result)
            if ends_epoch and i == len(reports) - 1 and member.checkpoint is not None:
                member.checkpoint.save(self.state())
            if member.on_epoch is not None:
                try:
                    member.on_epoch(result)
                except Exception as stop:  # the caller's way to stop this member (pruned)
                    member.stopped = stop
                    return

    def state(self) -> dict[str, object]:
        """The member's checkpoint at an epoch's end, as `fit` saves one: a retry continues it
        alone. Its buffers are views of the group's stacks: copied, so that each file holds its
        own."""
        return {
            "model": {k: v.clone() for k, v in self.member.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": schedule_state(self.schedule),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": [dataclasses.asdict(r) for r in self.member.history],
        }


class _Group:
    """The members still training: their parameters stacked per step, their buffers stacked once
    (each member's module holding a view of its row), one step for all of them."""

    def __init__(self, trainers: list[_Trainer], device: torch.device, mode: str) -> None:
        self.trainers = trainers
        self.structure = trainers[0].member.model  # its own tensors are swapped out per call
        models = [t.member.model for t in trainers]
        own = [dict(m.named_parameters()) for m in models]
        # Each name's tensors across the members, looked up once: the step only stacks them.
        self.parameters = {
            name: [p[name] for p in own] for name, _ in self.structure.named_parameters()
        }
        own_buffers = [dict(m.named_buffers()) for m in models]
        self.buffers = {
            name: torch.stack([b[name] for b in own_buffers])
            for name, _ in self.structure.named_buffers()
        }
        for name, stacked in self.buffers.items():
            for row, model in zip(stacked, models, strict=True):
                _set_buffer(model, name, row)
        self.device = device
        self._step = Step(self._body, device, mode)

    @property
    def ran(self) -> tuple[str, str | None]:
        return self._step.ran, self._step.fallback

    def train(self) -> None:
        self.structure.train()

    def step(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        return self._step(x, y)

    def _stacked_parameters(self) -> dict[str, torch.Tensor]:
        return {name: torch.stack(tensors) for name, tensors in self.parameters.items()}

    def _outputs(self, x: Inputs, in_dims: int | None) -> torch.Tensor:
        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: Inputs):  # noqa: ANN202
            inputs = x if isinstance(x, tuple) else (x,)
            return functional_call(self.structure, (params, buffers), inputs)

        batched = torch.vmap(one, in_dims=(0, 0, in_dims), randomness="different")
        return batched(self._stacked_parameters(), self.buffers, x)

    def _body(self, x: Inputs, y: torch.Tensor) -> torch.Tensor:
        """One step of every member: their K batches ``x``/``y`` stacked on the first dimension;
        returns the K losses."""
        for trainer in self.trainers:
            trainer.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, cache=self._step.mode != "captured"):
            outputs = self._outputs(x, 0)
            losses = torch.stack(
                [
                    t.loss_of(out, target)
                    for t, out, target in zip(self.trainers, outputs, y, strict=True)
                ]
            )
        losses.sum().backward()  # each member's parameters get the gradient of its own loss
        for trainer in self.trainers:
            if trainer.member.hp.grad_clip > 0:
                nn.utils.clip_grad_norm_(trainer.parameters, trainer.member.hp.grad_clip)
            trainer.optimizer.step()
        return losses.detach().float()

    @torch.inference_mode()
    def evaluate(self, data: TrainingData, scoring: Scoring) -> list[float]:
        """Every member's validation metric, one batched forward per validation batch."""
        self.structure.eval()
        metrics = [scoring.new_metric(self.device) for _ in self.trainers]
        for x, y in data.val_batches(eval_batch_size(self.device)):
            with autocast(self.device):
                outputs = self._outputs(x, None)
            for metric, output in zip(metrics, outputs, strict=True):
                if data.targets is not None:
                    output = data.targets.restore(output.float())
                metric.update(output, y)
        self.structure.train()
        return [metric.compute() for metric in metrics]


def _stacked(batches: list[tuple[Inputs, torch.Tensor]]) -> tuple[Inputs, torch.Tensor]:
    """K members' batches as one: inputs and targets stacked on a new first dimension."""
    xs, ys = zip(*batches, strict=True)
    if isinstance(xs[0], tuple):
        x: Inputs = tuple(torch.stack(parts) for parts in zip(*xs, strict=True))
    else:
        x = torch.stack(xs)  # type: ignore[arg-type]
    return x, torch.stack(ys)


def _set_buffer(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attribute = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    module._buffers[attribute] = value
