"""A space's ``[task]`` → one `Task`: a registered task or the user's own data, with its model.

Built-in and user tasks come out the same: a loader of splits, an input shape, a class count, the
scoring (kind, loss, metric, direction) and a model factory, so the objective, `fit`, reports,
export and benchmarks never ask where a task came from. Here, before any study exists, the factory
is imported and its signature checked against the names the space will give it, and the user's
loss and metric are imported; `check_model` then builds the model at the ends of the space and
runs it, with the loss and the metric, on two real training examples. Errors name the space file
and the key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from search import given, references, scoring, tasks
from search.contract import LOOP_PARAMS, Inputs
from search.errors import SearchError, SpaceError, TaskError
from search.given import NOTHING, Given
from search.spaces import Space
from search.tasks import factory, models, own_training, user_data
from search.tasks.checks import TargetRule

# Beside the default storage: a study's decoded data lives where its database does.
DEFAULT_CACHE_DIR = Path("studies") / "cache"


def resolve(
    space: Space,
    *,
    data_dir: Path = Path("data"),
    download: bool = False,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    objects: Given = NOTHING,
) -> tasks.Task:
    """The task ``space`` names, with its model factory and scoring. The user's data is read
    (from its cache entry when it holds it; worker processes `reopen` that entry); a registered
    task's data is not touched. ``objects`` are what markers in the space stand for (see
    `search.given`). A space of the user's own training function makes a task of that function.

    Raises:
        SpaceError: ``<space file>: task.model|task.data|task.loss|task.metric: <what is wrong>``.
    """
    for keyword in given.missing(space.data["task"], objects):
        raise SpaceError(
            f"{space.source}: task.{keyword}: stands for an object given from Python "
            f"(search.run({keyword}=...)), and none was given"
        )
    if space.train is not None:
        return _own_training(space, objects)
    model = model_factory(space, objects)
    try:
        scoring.resolve(space.scoring)
    except TaskError as e:
        raise SpaceError(f"{space.source}: {e}") from None
    if not space.user_data:
        task = tasks.get(space.task)
        return dataclasses.replace(
            task,
            model=model,
            scoring=space.scoring.with_outputs(task.num_classes),
            normalize=space.normalize,
        )
    rule = TargetRule(space.scoring.kind, space.scoring.own_loss or space.scoring.own_metric)
    try:
        data = user_data.read(
            space.data_ref,
            space.base_dir,
            image_size=space.image_size,
            test_fraction=space.test_fraction,
            cache_dir=cache_dir,
            rule=rule,
            objects=objects.data,
        )
    except TaskError as e:
        raise _fail(space, "task.data", e) from None
    if data.train.targets.is_floating_point() and space.scoring.metric in ("accuracy", "f1"):
        raise _fail(
            space,
            "task.metric",
            TaskError(
                f"{space.scoring.metric} needs integer class labels, and the data's are floats; "
                "name a metric of your own (task.metric) and its task.direction"
            ),
        )
    examples = data.fingerprint["examples"]
    fingerprint = {"data": data.fingerprint}
    if not model.builtin:
        fingerprint["model"] = _code_fingerprint(space.model, space.base_dir, model.fn)
    if space.scoring.kind == "regression":
        what = f"{data.num_classes} target{'s' if data.num_classes > 1 else ''}"
    else:
        what = f"{data.num_classes} classes"
    description = (
        f"your data {space.task}: {examples['train']} train, {examples['val']} val, "
        f"{examples['test']} test ({data.fingerprint['test']}), {_shapes(data.input_shape)}, {what}"
    )
    template = tasks.Task(
        name=space.task,
        description=description,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        models=(model.reference,),
        augment=False,
        needs_data_dir=False,
        load=_unread,
        model=model,
        fingerprint=fingerprint,
        classes=data.classes,
        scoring=space.scoring.with_outputs(data.num_classes),
        normalize=space.normalize,
    )
    return _with_data(template, data)


def reopen(cache: Path, template: tasks.Task) -> tasks.Task:
    """A user task again, from the cache entry its data was decoded into (how a `Task` crosses
    into a worker process)."""
    return _with_data(template, user_data.open_cached(cache))


def _with_data(template: tasks.Task, data: user_data.UserData) -> tasks.Task:
    return dataclasses.replace(
        template,
        load=lambda _dir, _download, train: data.train if train else data.test,
        validation=data.val,
        cache=data.cache,
        reopen=reopen,
    )


def _unread(data_dir: Path, download: bool, train: bool) -> tasks.Split:
    raise TaskError("the user's data is not read yet")


def _shapes(input_shape: tuple[Any, ...]) -> str:
    if input_shape and isinstance(input_shape[0], tuple):
        return "inputs " + ", ".join(models.shape_text(shape) for shape in input_shape)
    return models.shape_text(input_shape)


def _own_training(space: Space, objects: Given) -> tasks.Task:
    """The task of a user's training function: the function, its fingerprint and scoring."""
    try:
        train = own_training.resolve(space.train, space.base_dir, objects.train)
    except TaskError as e:
        raise _fail(space, "task.train", e) from None
    return tasks.Task(
        name=space.task,
        description=f"your training function {train.name}",
        input_shape=(),
        num_classes=0,
        models=(),
        augment=False,
        needs_data_dir=False,
        load=_unread,
        fingerprint={"train": _code_fingerprint(space.train, space.base_dir, train.fn)},
        scoring=space.scoring,
        train=train,
    )


def _code_fingerprint(reference: str, base: Path, fn: Any) -> dict[str, Any]:
    if given.is_marker(reference):
        return given.fingerprint(reference, fn)
    return references.fingerprint(reference, base)


def model_factory(space: Space, objects: Given = NOTHING) -> factory.ModelFactory:
    """The space's model factory, imported and its signature checked against what it will get."""
    try:
        if given.is_marker(space.model):
            resolved = factory.ModelFactory(space.model, objects.model, space.model_args)
        else:
            resolved = factory.resolve(space.model, space.model_args, space.base_dir)
        sampled = [p for p in space.params if p.name not in LOOP_PARAMS]
        factory.check_signature(
            resolved.fn,
            given=[*factory.DATA_ARGS, *space.model_args, *(p.name for p in sampled)],
            always=[
                *factory.DATA_ARGS,
                *space.model_args,
                *(p.name for p in sampled if not p.when),
            ],
            name=space.model,
        )
    except TaskError as e:
        raise _fail(space, "task.model", e) from None
    return resolved


def check_model(task: tasks.Task, space: Space, examples: tuple[Inputs, torch.Tensor]) -> None:
    """Build the model at the ends of every param that shapes it and run it, on the CPU, on two
    real (prepared) training examples, through the task's loss and metric; the output must be
    shaped for their targets (one logit per class for class labels).

    Raises:
        SpaceError: naming the space file, ``task.model`` (or ``task.loss``, ``task.metric``)
            and what went wrong.
    """
    inputs, targets = examples
    try:
        factory.check_builds(
            task.model,
            space.extreme_configurations(),
            inputs,
            targets.cpu(),
            task.num_classes,
            task.scoring,
            space.hyperparameters,
        )
    except TaskError as e:
        text = str(e)
        if text.startswith(("task.loss: ", "task.metric: ")):
            raise SpaceError(f"{space.source}: {text}") from None
        raise _fail(space, "task.model", e) from None


def changed(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between a study's recorded fingerprints and the data and code now."""
    old, new = stored.get("data"), current.get("data")
    if old and new and old["sha256"] != new["sha256"]:
        if new.get("kind") == "python":
            return (
                "data= is not the data the study was created with "
                f"({_sizes(old)} then, {_sizes(new)} now, other content)"
            )
        counts = [
            f"{old['examples'][k]:,} → {new['examples'][k]:,} {k}"
            for k in ("train", "val", "test")
            if old["examples"].get(k) != new["examples"].get(k)
        ]
        detail = ", ".join(counts) if counts else "same sizes, other content"
        return f"the data {new['data']} changed since the study was created ({detail})"
    for key, what in (("model", "the model factory"), ("train", "the training function")):
        old, new = stored.get(key), current.get(key)
        if not old or not new or old["sha256"] is None or new["sha256"] is None:
            continue  # a source that cannot be read: nothing to compare
        if old["sha256"] != new["sha256"]:
            if new.get("python"):
                was = old.get("name") or given.name_of_marker(old["reference"])
                if was == new["name"]:
                    return (
                        f"{what} {was} given from Python has other source than the {was} the "
                        "study was created with (its own, or that of what it uses by name)"
                    )
                return (
                    f"{what} {new['name']} given from Python is not {was}, the one the study was "
                    "created with (their sources differ)"
                )
            return (
                f"{what} {new['reference']} changed since the study was created "
                f"({new['file']} differs)"
            )
    return None


def _sizes(fingerprint: dict[str, Any]) -> str:
    examples = fingerprint["examples"]
    return "/".join(f"{examples[k]:,}" for k in ("train", "val", "test")) + " examples"


def _fail(space: Space, key: str, error: SearchError) -> SpaceError:
    return SpaceError(f"{space.source}: {key}: {error}")
