"""A space's ``[task]`` → one `Task`: a registered task or the user's own data, with its model.

Built-in and user tasks come out the same: a loader of splits, an input shape, a class count and a
model factory, so the objective, `fit`, reports, export and benchmarks never ask where a task came
from. Here, before any study exists, the factory is imported and its signature checked against the
names the space will give it; `check_model` then builds it at the ends of the space and runs it on
two real training examples. Errors name the space file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from search import references, tasks
from search.errors import SearchError, SpaceError, TaskError
from search.spaces import Space
from search.tasks import factory, models, user_data
from search.train import LOOP_PARAMS

# Beside the default storage: a study's decoded data lives where its database does.
DEFAULT_CACHE_DIR = Path("studies") / "cache"


def resolve(
    space: Space,
    *,
    data_dir: Path = Path("data"),
    download: bool = False,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> tasks.Task:
    """The task ``space`` names, with its model factory. The user's data is read (from its cache
    entry when it holds it; worker processes `reopen` that entry); a registered task's data is not
    touched.

    Raises:
        SpaceError: ``<space file>: task.model|task.data: <what is wrong>``.
    """
    model = model_factory(space)
    if not space.user_data:
        return tasks.get(space.task).with_model(model)
    try:
        data = user_data.read(
            space.data_ref,
            space.base_dir,
            image_size=space.image_size,
            test_fraction=space.test_fraction,
            cache_dir=cache_dir,
        )
    except TaskError as e:
        raise _fail(space, "task.data", e) from None
    examples = data.fingerprint["examples"]
    fingerprint = {"data": data.fingerprint}
    if not model.builtin:
        fingerprint["model"] = references.fingerprint(space.model, space.base_dir)
    description = (
        f"your data {space.task}: {examples['train']} train, {examples['val']} val, "
        f"{examples['test']} test ({data.fingerprint['test']}), "
        f"{models.shape_text(data.input_shape)}, {data.num_classes} classes"
    )
    return _user_task(data, space.task, description, model, fingerprint)


def reopen(
    cache: Path,
    name: str,
    description: str,
    model: factory.ModelFactory,
    fingerprint: dict[str, Any] | None,
) -> tasks.Task:
    """A user task again, from the cache entry its data was decoded into (how a `Task` crosses
    into a worker process)."""
    return _user_task(user_data.open_cached(cache), name, description, model, fingerprint)


def _user_task(
    data: user_data.UserData,
    name: str,
    description: str,
    model: factory.ModelFactory,
    fingerprint: dict[str, Any] | None,
) -> tasks.Task:
    return tasks.Task(
        name=name,
        description=description,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        models=(model.reference,),
        augment=False,
        needs_data_dir=False,
        load=lambda _dir, _download, train: data.train if train else data.test,
        validation=data.val,
        model=model,
        fingerprint=fingerprint,
        cache=data.cache,
    )


def model_factory(space: Space) -> factory.ModelFactory:
    """The space's model factory, imported and its signature checked against what it will get."""
    try:
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


def check_model(task: tasks.Task, space: Space, examples: torch.Tensor) -> None:
    """Build the model at the ends of every param that shapes it and run it, on the CPU, on two
    real (normalized) training examples; the output must be (2, num_classes).

    Raises:
        SpaceError: naming the space file, ``task.model`` and what went wrong.
    """
    try:
        factory.check_builds(
            task.model, space.extreme_configurations(), examples.cpu(), task.num_classes
        )
    except TaskError as e:
        raise _fail(space, "task.model", e) from None


def changed(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between a study's recorded fingerprints and the data and code now."""
    old, new = stored.get("data"), current.get("data")
    if old and new and old["sha256"] != new["sha256"]:
        counts = [
            f"{old['examples'][k]:,} → {new['examples'][k]:,} {k}"
            for k in ("train", "val", "test")
            if old["examples"].get(k) != new["examples"].get(k)
        ]
        detail = ", ".join(counts) if counts else "same sizes, other content"
        return f"the data {new['data']} changed since the study was created ({detail})"
    old, new = stored.get("model"), current.get("model")
    if old and new and old["sha256"] != new["sha256"]:
        return (
            f"the model factory {new['reference']} changed since the study was created "
            f"({new['file']} differs)"
        )
    return None


def _fail(space: Space, key: str, error: SearchError) -> SpaceError:
    return SpaceError(f"{space.source}: {key}: {error}")
