"""`search bench loop`: the harness's training loop against a plain PyTorch loop, side by side.

The reference loop is written the way the PyTorch tutorials write it: a dataset that hands out one
PIL image at a time through torchvision's ``ToTensor`` and ``Normalize`` (and ``RandomCrop`` and
``RandomHorizontalFlip`` where the task augments), a ``DataLoader`` with two worker processes, and
``loss.item()`` after every step. The harness is `search.train.fit` on device-resident data. Both
train the same model family and depth with the same optimizer for the same number of full batches,
in one process and one run, after a few untimed warm-up steps each. The harness runs three times:
on device-resident data, on data streamed from the host (`search.tasks.streaming`), and on
resident data with the recipe people tune on top of the constant rate (a cosine schedule with
warm-up and gradient clipping, what a step of it costs). Then
``--workers N`` runs N harness processes at once and adds up their images/s. With ``--space`` the
data and model are a space's (the user's own: its model factory at the low end of every param),
and the first read of the data (decoding it) is timed against a read from the cache.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from search import capacity, spaces, tasks
from search.contract import LOOP_PARAMS, EpochResult, Hyperparameters, TrainingData
from search.errors import Diverged, SettingsError
from search.fused_train import Member, fit_fused
from search.step import StepReport
from search.tasks import factory, resolve, user_data
from search.tasks.data import DeviceData
from search.tasks.streaming import StreamingData
from search.train import evaluate, fit, make_optimizer, pick_device

# The recipe on top of the constant rate that `search bench loop` times beside it.
RECIPE = {"lr_schedule": "cosine", "warmup": 0.1, "grad_clip": 1.0}

WARMUP_STEPS = 5


@dataclass(frozen=True)
class LoopSettings:
    task: str = "mnist"
    model: str = "cnn"
    depth: int = 2
    batch_sizes: tuple[int, ...] = (64, 256, 1024)
    workers: tuple[int, ...] = ()
    epochs: int = 1
    examples: int | None = None  # the first N training examples (all by default)
    device: str | None = None
    data_dir: Path = Path("data")
    space: str | None = None  # a space's task and model instead of --task/--model/--depth
    captured: bool = False  # also the harness with its step captured (a CUDA graph; compiled)
    fuse: tuple[int, ...] = ()  # also K trials fused into one model (`search.fused_train`)
    auto: bool = False  # also as many processes as `--jobs auto` picks


@dataclass(frozen=True)
class Row:
    loop: str  # "reference", "harness", "streaming", "recipe", "captured", "fused ×K", "harness ×N"
    batch_size: int
    seconds_per_epoch: float
    images_per_second: float
    ratio: float  # images/s over the reference's at this batch size


def run(settings: LoopSettings, echo: Any = print) -> tuple[str, list[Row]]:
    """Measure every batch size; return the device's name and the rows of the table."""
    if settings.epochs < 1 or min(settings.batch_sizes, default=0) < 1:
        raise SettingsError("--epochs and every --batch-sizes value must be at least 1")
    task, params = _task(settings)
    task.build_model(params)  # a model of these params builds
    if settings.space is not None:
        _time_reads(spaces.load(settings.space), echo)
    split = _split(task, settings)
    if isinstance(split.inputs, tuple) or not pil_readable(split.inputs):
        raise SettingsError(
            f"--task {task.name}: the reference loop reads images through PIL (8-bit, or "
            "one-channel float); use mnist, fashion-mnist, cifar10 or a synthetic-* task"
        )
    device = pick_device(settings.device)
    data = DeviceData.from_split(
        split, val_fraction=0.01, seed=0, device=device, augment=task.augment
    )
    if max(settings.batch_sizes) > data.n_train:
        raise SettingsError(
            f"--batch-sizes {max(settings.batch_sizes)} exceeds the {data.n_train} training examples"
        )
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    streamed = StreamingData.from_split(
        split, val_fraction=0.01, seed=0, device=device, augment=task.augment
    )
    model_args = ", ".join(f"{k}={v!r}" for k, v in task.model.kwargs(params).items())
    echo(
        f"bench loop: task {task.name} ({task.description}), model {task.model.reference} "
        f"({model_args}), {data.n_train} training images, {settings.epochs} epoch(s), on {name}"
    )
    rows: list[Row] = []
    packs = list(settings.workers)
    if settings.auto:
        hp = Hyperparameters(
            batch_size=min(settings.batch_sizes), optimizer="sgd", lr=0.01, momentum=0.9
        )
        choice = capacity.choose_for(task, params, hp, data, device, trials=1000)
        echo(f"--jobs auto: {choice.reason}")
        packs.append(choice.jobs)
    step = "captured" if settings.captured else "eager"
    for batch_size in settings.batch_sizes:
        hp = Hyperparameters(batch_size=batch_size, optimizer="sgd", lr=0.01, momentum=0.9)
        reference = _reference(task, params, settings, split, data, hp, device)
        rows.append(Row("reference", batch_size, *reference, 1.0))
        harness = _harness(task, params, settings, data, hp)
        rows.append(Row("harness", batch_size, *harness, harness[1] / reference[1]))
        streaming = _harness(task, params, settings, streamed, hp)
        rows.append(Row("streaming", batch_size, *streaming, streaming[1] / reference[1]))
        recipe = _harness(task, params, settings, data, dataclasses.replace(hp, **RECIPE))
        rows.append(Row("recipe", batch_size, *recipe, recipe[1] / reference[1]))
        if settings.captured:
            captured = _harness(task, params, settings, data, hp, step="captured")
            rows.append(Row("captured", batch_size, *captured, captured[1] / reference[1]))
        for k in settings.fuse:
            fused = _fused(task, params, settings, data, hp, k, step)
            rows.append(Row(f"fused ×{k}", batch_size, *fused, fused[1] / reference[1]))
        for n in packs:
            total = _packed(settings, n, batch_size)
            rows.append(Row(f"harness ×{n}", batch_size, float("nan"), total, total / reference[1]))
        shown = 4 + settings.captured + len(settings.fuse) + len(packs)
        for row in rows[-shown:]:
            echo(f"  {format_row(row)}")
        echo(
            f"  the recipe ({', '.join(f'{k} {v}' for k, v in RECIPE.items())}) takes "
            f"{harness[1] / recipe[1]:.2f}× the harness's time per step at batch {batch_size}"
        )
    return name, rows


def _task(settings: LoopSettings) -> tuple[tasks.Task, dict[str, Any]]:
    """The task with its model factory, and the params its model is built with."""
    if settings.space is not None:
        space = spaces.load(settings.space)
        task = resolve.resolve(space, data_dir=settings.data_dir)
        low = space.extreme_configurations()[0]
        return task, {k: v for k, v in low.items() if k not in LOOP_PARAMS}
    task = tasks.get(settings.task)
    if settings.model not in task.models:
        raise SettingsError(
            f"--model {settings.model}: task {task.name} has {', '.join(task.models)}"
        )
    return task.with_model(factory.resolve(settings.model, {}, Path("."))), {
        "depth": settings.depth
    }


def _time_reads(space: spaces.Space, echo: Any) -> None:
    """The user's data decoded from its files (into a fresh cache) against read from the cache."""
    if not space.user_data:
        return
    import torchvision  # noqa: F401  (a one-time import, not part of reading the data)

    with tempfile.TemporaryDirectory(prefix="search-bench-cache-") as folder:
        start = time.perf_counter()
        first = user_data.read(
            space.data_ref,
            space.base_dir,
            image_size=space.image_size,
            test_fraction=space.test_fraction,
            cache_dir=Path(folder),
        )
        decoded = time.perf_counter() - start
        start = time.perf_counter()
        again = user_data.open_cached(first.cache)
        for split in (again.train, again.val, again.test):
            if split is not None:
                for x in split.inputs if isinstance(split.inputs, tuple) else (split.inputs,):
                    x.sum()  # every page of the memory-mapped file read
        cached = time.perf_counter() - start
    n = sum(first.fingerprint["examples"].values())
    echo(
        f"data {space.data_ref}: {n:,} examples; first read {decoded:.2f} s "
        f"({n / decoded:,.0f} examples/s), cached read {cached:.3f} s ({decoded / cached:,.0f}× faster)"
    )


def _split(task: tasks.Task, settings: LoopSettings) -> tasks.Split:
    split = task.load(settings.data_dir, False, True)
    if settings.examples is None:
        return split
    return split.take(slice(0, settings.examples))


def _build(task: tasks.Task, params: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return task.build_model(params)


def _harness(
    task: tasks.Task,
    params: dict[str, Any],
    settings: LoopSettings,
    data: TrainingData,
    hp: Hyperparameters,
    step: str = "eager",
) -> tuple[float, float]:
    # A few untimed steps on a small resident copy.
    warm = _warm_up_data(data, hp.batch_size)
    fit(_build(task, params), warm, hp, epochs=1, seed=0, scoring=task.scoring, step=step)
    report = StepReport()
    history = fit(
        _build(task, params), data, hp, epochs=settings.epochs, seed=0, scoring=task.scoring,
        step=step, step_report=report,
    )  # fmt: skip
    if step == "captured" and report.fallback:
        raise SettingsError(f"bench loop: the captured step fell back to eager: {report.fallback}")
    images_per_second = sum(r.images_per_second for r in history) / len(history)
    steps = data.n_train // hp.batch_size
    return steps * hp.batch_size / images_per_second, images_per_second


def _fused(
    task: tasks.Task,
    params: dict[str, Any],
    settings: LoopSettings,
    data: TrainingData,
    hp: Hyperparameters,
    k: int,
    step: str,
) -> tuple[float, float]:
    """K trials of the same recipe (each its own model and data order) fused into one model:
    the seconds per epoch of all K, and the images/s they train together."""

    def members() -> list[Member]:
        return [Member(_build(task, params, seed=i), hp, seed=i) for i in range(k)]

    fit_fused(
        members(), _warm_up_data(data, hp.batch_size), epochs=1, scoring=task.scoring, step=step
    )
    group = members()
    report = fit_fused(group, data, epochs=settings.epochs, scoring=task.scoring, step=step)
    if step == "captured" and data.device.type == "cuda" and report.fallback:
        raise SettingsError(f"bench loop: the fused step fell back to eager: {report.fallback}")
    history = group[0].history  # each member's images/s is the group's (see fused_train)
    images_per_second = sum(r.images_per_second for r in history) / len(history)
    steps = data.n_train // hp.batch_size
    return k * steps * hp.batch_size / images_per_second, images_per_second


def _warm_up_data(data: TrainingData, batch_size: int) -> DeviceData:
    n = batch_size * WARMUP_STEPS + 2
    return DeviceData.from_split(
        tasks.Split(*data.examples(n)), val_fraction=0.01, seed=0, device=data.device
    )


def _reference(
    task: tasks.Task,
    params: dict[str, Any],
    settings: LoopSettings,
    split: tasks.Split,
    data: DeviceData,
    hp: Hyperparameters,
    device: torch.device,
) -> tuple[float, float]:
    mean, std = _statistics(data)
    dataset = _TutorialDataset(split, data.n_train, mean, std, task.augment)
    model = _build(task, params).to(device)
    optimizer = make_optimizer(hp, model.parameters())
    loader = _tutorial_loader(dataset, hp.batch_size, device)
    model.train()
    _tutorial_steps(model, optimizer, loader, device, limit=WARMUP_STEPS)  # untimed
    seconds, steps = 0.0, 0
    for _ in range(settings.epochs):
        start = time.perf_counter()
        steps += _tutorial_steps(model, optimizer, loader, device)[1]
        seconds += time.perf_counter() - start
    return seconds / settings.epochs, steps * hp.batch_size / seconds


def _tutorial_loader(
    dataset: torch.utils.data.Dataset, batch_size: int, device: torch.device, seed: int = 0
) -> torch.utils.data.DataLoader:
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=2,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
    )


def _tutorial_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    limit: int | None = None,
) -> tuple[float, int]:
    """One pass over ``loader`` (or its first ``limit`` batches) the tutorial way; returns the
    summed loss and the number of steps."""
    total, steps = 0.0, 0
    for x, y in loader:
        if steps == limit:
            break
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item()  # as tutorials do: the running loss, read every step
        steps += 1
    return total, steps


def _statistics(data: DeviceData) -> tuple[torch.Tensor, torch.Tensor]:
    """The images' standardization (none, where ``task.normalize = false``: mean 0, std 1)."""
    scale = data.inputs.parts[0]
    if scale.mean is None:
        return torch.zeros((), device=data.device), torch.ones((), device=data.device)
    return scale.mean, scale.std


def pil_readable(images: torch.Tensor) -> bool:
    """8-bit images of any channels, or one-channel float images (PIL's mode F)."""
    return images.dtype == torch.uint8 or images.shape[1] == 1


def reference_fit(
    model: torch.nn.Module,
    data: DeviceData,
    hp: Hyperparameters,
    *,
    epochs: int,
    seed: int,
    scoring: Any = None,
    on_epoch: Any = None,
    checkpoint: Any = None,
    history: list[EpochResult] | None = None,
    reports_per_epoch: int = 1,
    schedule_epochs: int | None = None,
    save_at: int | None = None,
    step: str = "eager",
    step_report: Any = None,
) -> list[EpochResult]:
    """`train.fit`'s signature on the reference loop, for `search bench study`'s second study.

    Each epoch trains the tutorial way (see the module docstring), at the constant rate of a
    tutorial, and then scores the validation split with the harness's `evaluate`, so the two
    studies differ in the training loop only. It keeps no checkpoints (a reference study is not
    resumed) and reports once per epoch; ``scoring`` is classification's, checked by the bench.
    Its steps are the tutorial's, eager whatever ``step`` asks (``step_report`` keeps saying so).
    """
    if reports_per_epoch != 1:
        raise ValueError(f"the reference loop reports once per epoch, not {reports_per_epoch}")
    if save_at is not None:
        raise ValueError("the reference loop keeps no checkpoints: it cannot pause a trial")
    device = data.device
    model.to(device)
    optimizer = make_optimizer(hp, model.parameters())
    loader = _tutorial_loader(_TutorialDataset.of(data), hp.batch_size, device, seed)
    history = [] if history is None else history
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        total, steps = _tutorial_steps(model, optimizer, loader, device)
        train_seconds = time.perf_counter() - start
        if not math.isfinite(total):
            raise Diverged(epoch, total / steps)
        result = EpochResult(
            epoch=epoch,
            train_loss=total / steps,
            value=evaluate(model, data.val_x, data.val_y),
            seconds=time.perf_counter() - start,
            images_per_second=steps * hp.batch_size / train_seconds,
        )
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    return history


class _TutorialDataset(torch.utils.data.Dataset):
    """One PIL image per sample through torchvision's transforms, as the tutorials load data."""

    def __init__(
        self, split: tasks.Split, n: int, mean: torch.Tensor, std: torch.Tensor, augment: bool
    ) -> None:
        from torchvision import transforms

        images = split.inputs[:n]
        as_pil = images.permute(0, 2, 3, 1).squeeze(-1)  # HW (or HWC for colour)
        self.images = as_pil.numpy() if images.dtype == torch.uint8 else as_pil.float().numpy()
        self.labels = split.targets[:n].tolist()
        steps: list[Any] = []
        if augment:
            steps += [
                transforms.RandomCrop(images.shape[-1], padding=4),
                transforms.RandomHorizontalFlip(),
            ]
        # ToTensor scales to 0..1; the harness normalizes raw values, so scale its statistics too.
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        steps += [
            transforms.ToTensor(),
            transforms.Normalize(
                (mean.flatten() / scale).tolist(), (std.flatten() / scale).tolist()
            ),
        ]
        self.transform = transforms.Compose(steps)

    @classmethod
    def of(cls, data: DeviceData) -> _TutorialDataset:
        """The training part of device-resident data, back at the dataset's own scale."""
        mean, std = _statistics(data)
        raw = (data.train_x.float() * std + mean).cpu()
        if not pil_readable(raw):  # colour: 8-bit, as it was read
            raw = raw.round().clamp(0, 255).to(torch.uint8)
        split = tasks.Split(raw.contiguous(), data.train_y.cpu())
        return cls(split, data.n_train, mean.cpu(), std.cpu(), data.augment)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def _packed(settings: LoopSettings, n: int, batch_size: int) -> float:
    """Aggregate images/s of ``n`` harness processes training at once."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ready = context.Barrier(n)
    processes = [
        context.Process(target=_one_worker, args=(settings, batch_size, n, ready, results))
        for _ in range(n)
    ]
    for process in processes:
        process.start()
    total = sum(results.get(timeout=3600) for _ in processes)
    for process in processes:
        process.join()
    return total


def _one_worker(settings: LoopSettings, batch_size: int, n: int, ready: Any, results: Any) -> None:
    device = pick_device(settings.device)
    torch.set_num_threads(capacity.threads_per_worker(n))
    task, params = _task(settings)
    data = DeviceData.from_split(
        _split(task, settings), val_fraction=0.01, seed=0, device=device, augment=task.augment
    )
    hp = Hyperparameters(batch_size=batch_size, optimizer="sgd", lr=0.01, momentum=0.9)
    ready.wait()  # every process loaded and on its device: start training together
    results.put(_harness(task, params, settings, data, hp)[1])


def format_row(row: Row) -> str:
    seconds = "" if math.isnan(row.seconds_per_epoch) else f"{row.seconds_per_epoch:8.2f}"
    return (
        f"{row.loop:<12} batch {row.batch_size:>5}  {seconds:>8} s/epoch  "
        f"{row.images_per_second:>10,.0f} images/s  {row.ratio:6.2f}× reference"
    )


def write_json(path: Path, device: str, settings: LoopSettings, rows: list[Row]) -> None:
    def plain(row: Row) -> dict[str, Any]:
        fields = asdict(row)
        # Packed workers have no one epoch time: JSON null, not NaN (which JSON does not have).
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}

    payload = {
        "device": device,
        "torch": torch.__version__,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "rows": [plain(r) for r in rows],
    }
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
