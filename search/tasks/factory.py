"""Model factories: what a space's ``task.model`` names, checked before a study exists.

A factory is any callable that takes keyword arguments only and returns an ``nn.Module``:
``input_shape`` and ``num_classes`` from the data (the classes, or for regression the targets per
example), every sampled param the training loop does not take (see `search.contract.split_params`),
and the space's fixed ``[task.model_args]``. The built-in
families (``cnn``, ``mlp``, ``resnet``, ``cnn1d``) are factories of this shape too, so one
`ModelFactory` builds every model the harness trains.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search import given, references
from search.contract import Inputs, closest_loop_param, first_input, model_output, split_params
from search.errors import TaskError
from search.scoring import Scoring
from search.tasks import models

# What a factory always gets from the data, whatever the space samples.
DATA_ARGS = ("input_shape", "num_classes")


@dataclass(frozen=True)
class ModelFactory:
    """A resolved ``task.model``.

    Attributes:
        reference: as the space names it: a family (``cnn``) or ``models.py:build``.
        fn: the callable.
        model_args: fixed keyword arguments (``[task.model_args]``).
        base: the folder a ``FILE.py:NAME`` reference is relative to.
    """

    reference: str
    fn: Callable[..., Any]
    model_args: dict[str, Any] = field(default_factory=dict)
    base: Path | None = None

    def __reduce__(self) -> Any:
        """Into a worker process by reference: the user's code is imported again there (a module
        loaded from a file path has no name another process could import it by); a factory given
        from Python crosses by value (`search.given`)."""
        if given.is_marker(self.reference):
            return _by_value, (self.reference, given.dumps(self.fn), self.model_args)
        return resolve, (self.reference, self.model_args, self.base)

    @property
    def builtin(self) -> bool:
        return is_builtin(self.reference)

    def kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        """What the factory gets from a trial's params, besides the data's shape and classes."""
        return {**self.model_args, **split_params(params)[1]}

    def build(
        self, params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        return self.fn(
            input_shape=tuple(input_shape), num_classes=num_classes, **self.kwargs(params)
        )

    def size(self, params: dict[str, Any]) -> dict[str, float]:
        """The numeric arguments a model is built with, defaults included (``depth`` 1 for a
        family), by which the objective tells that one configuration is at least as large as
        another that ran out of memory."""
        given = self.kwargs(params)
        try:
            bound = inspect.signature(self.fn).bind_partial(**given)
            bound.apply_defaults()
            given = dict(bound.arguments)
        except (TypeError, ValueError):
            pass
        return {
            name: value
            for name, value in given.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }


def _by_value(reference: str, fn: bytes, model_args: dict[str, Any]) -> ModelFactory:
    return ModelFactory(reference, given.loads(fn), model_args)


def is_builtin(reference: str) -> bool:
    """Whether ``task.model`` names a built-in family rather than the user's own factory."""
    return reference in models.FACTORIES


def resolve(reference: str, model_args: dict[str, Any], base: Path | None) -> ModelFactory:
    """A family by name, or the callable a ``FILE.py:NAME`` / ``module:NAME`` reference names."""
    if reference in models.FACTORIES:
        return ModelFactory(reference, models.FACTORIES[reference], dict(model_args), base)
    return ModelFactory(reference, references.load(reference, base), dict(model_args), base)


def check_signature(
    fn: Callable[..., Any], given: Iterable[str], always: Iterable[str], name: str
) -> None:
    """That ``fn`` accepts every keyword in ``given`` and needs none beyond ``always``.

    Raises:
        TaskError: naming the arguments it cannot take or would miss.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: calling it is the only check
    parameters = signature.parameters.values()
    keywords = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters)
    has = ", ".join(p.name for p in parameters) or "none"
    unknown = [n for n in given if n not in keywords] if not takes_any else []
    meant = {n: closest_loop_param(n) for n in unknown if closest_loop_param(n)}
    if meant:
        name, loop = next(iter(meant.items()))
        raise TaskError(_not_the_loops(name, loop))
    if unknown:
        raise TaskError(
            f"{name} cannot take {', '.join(unknown)} (its parameters: {has}); add "
            f"{'them' if len(unknown) > 1 else 'it'} to its signature or leave "
            f"{'them' if len(unknown) > 1 else 'it'} out of the space"
        )
    always = set(always)
    required = [
        p.name
        for p in parameters
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in always
    ]
    if required:
        raise TaskError(
            f"{name} requires {', '.join(required)}, which the space does not always give it; "
            "give each a default, sample it, or set it in [task.model_args]"
        )


def _not_the_loops(name: str, loop: str) -> str:
    if loop == "task.epochs":
        return "epochs is the study's: set task.epochs (or search run --epochs), not a param"
    return f"{name} is not a param the training loop takes; did you mean {loop}?"


def check_builds(
    factory: ModelFactory,
    configurations: list[dict[str, Any]],
    examples: Inputs,
    targets: torch.Tensor,
    num_classes: int,
    scoring: Scoring,
    hyperparameters: Any,
) -> None:
    """Build the model at each configuration and run it on ``examples`` (two real training
    examples, on the CPU), forward and backward in training mode through the task's loss on
    their ``targets``, and score them with its metric. The output must have the targets'
    shape, with one logit per class in dimension 1 for class labels.

    Raises:
        TaskError: the factory, the forward pass, the loss or the metric raised, or the output
            is not shaped for the targets; the message starts ``task.loss:`` or
            ``task.metric:`` where the user's loss or metric is at fault.
    """
    input_shape = _shape(examples)
    expected = _expected_output(targets, num_classes)
    seen: list[dict[str, Any]] = []
    for params in configurations:
        args = factory.kwargs(params)
        if args in seen:
            continue
        seen.append(args)
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items()) or "no params"
        with torch.random.fork_rng(devices=[]):  # leave the study's random state as it was
            try:
                model = factory.build(params, input_shape, num_classes)
            except TaskError as e:
                raise TaskError(f"{factory.reference} with {shown}: {e}") from None
            except Exception as e:
                raise TaskError(
                    f"{factory.reference} raised building the model with {shown}: "
                    f"{references.failure_line(e)}"
                ) from None
            if not isinstance(model, nn.Module):
                raise TaskError(
                    f"{factory.reference} returned {type(model).__name__!r} with {shown}, "
                    "not a torch.nn.Module"
                )
            if not any(p.requires_grad for p in model.parameters()):
                raise TaskError(
                    f"{factory.reference} with {shown}: the model has no parameters to train"
                )
            model.train()
            try:
                out = model_output(model, examples)
            except Exception as e:
                raise TaskError(
                    f"{factory.reference} with {shown}: the forward pass on 2 training examples "
                    f"of {_described(examples)} raised {references.failure_line(e)}"
                ) from None
            _check_output(out, expected, factory.reference, shown, num_classes, targets)
            _check_scoring(out, targets, scoring, hyperparameters(params))


def _check_output(
    out: Any,
    expected: tuple[int, ...],
    reference: str,
    shown: str,
    num_classes: int,
    targets: torch.Tensor,
) -> None:
    if not isinstance(out, torch.Tensor):
        raise TaskError(
            f"{reference} with {shown}: the model returned {type(out).__name__!r}, "
            f"not a tensor of shape {expected}"
        )
    if tuple(out.shape) == expected:
        return
    if targets.is_floating_point():
        what = f"the shape of the {len(targets)} examples' targets"
    else:
        what = f"one logit for each of the data's {num_classes} classes"
    raise TaskError(
        f"{reference} with {shown}: the model's output has shape {tuple(out.shape)} on "
        f"{len(targets)} examples; expected {expected}, {what}"
    )


def _check_scoring(out: torch.Tensor, targets: torch.Tensor, scoring: Scoring, hp: Any) -> None:
    """The loss on the check's output, backward, and the metric on it (the user's own are
    imported and run here, before a study exists)."""
    try:
        loss = scoring.criterion(hp)(out, targets)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = (
                f"a tensor of shape {tuple(loss.shape)}"
                if isinstance(loss, torch.Tensor)
                else repr(type(loss).__name__)
            )
            raise TypeError(f"it returned {got}, not a scalar tensor")
        loss.float().backward()
    except TaskError:
        raise
    except Exception as e:
        raise TaskError(
            f"task.loss: {scoring.loss} on the model's output {tuple(out.shape)} and 2 targets "
            f"{tuple(targets.shape)}: {references.failure_line(e)}"
        ) from None
    try:
        metric = scoring.new_metric(out.device)
        metric.update(out.detach(), targets)
        value = metric.compute()
        float(value)
    except TaskError:
        raise
    except Exception as e:
        raise TaskError(
            f"task.metric: {scoring.metric} on the model's output {tuple(out.shape)} and 2 "
            f"targets {tuple(targets.shape)}: {references.failure_line(e)}"
        ) from None


def _expected_output(targets: torch.Tensor, num_classes: int) -> tuple[int, ...]:
    """Float targets: their own shape; class labels N×...: N×K×..."""
    if targets.is_floating_point():
        return tuple(targets.shape)
    return (len(targets), num_classes, *targets.shape[1:])


def _shape(examples: Inputs) -> tuple[Any, ...]:
    if isinstance(examples, tuple):
        return tuple(tuple(x.shape[1:]) for x in examples)
    return tuple(examples.shape[1:])


def _described(examples: Inputs) -> str:
    if isinstance(examples, tuple):
        return "inputs " + ", ".join(_one(x) for x in examples)
    return _one(first_input(examples))


def _one(x: torch.Tensor) -> str:
    return f"shape {models.shape_text(tuple(x.shape[1:]))} ({str(x.dtype).removeprefix('torch.')})"
