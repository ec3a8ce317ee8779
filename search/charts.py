"""Plotly figures for the report. Optuna's own `optuna.visualization` figures wherever one exists;
by hand only what it lacks (learning curves that mark pruned and best trials, comparisons by a
hyperparameter, throughput, and several studies on one axis).

Each function returns a figure, or None when the study has too little data for it.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from search.study import (
    COSTS,
    Metric,
    epoch_values,
    is_multi_objective,
    metric_of,
    trial_attrs,
    value,
)

# A chart that fails on odd data must not take the whole page with it; these are what Optuna's
# plotting raises for studies it cannot draw (too few trials, a single value, no params).
_UNDRAWABLE = (ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError)

COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "best": "#2ca02c"}


def complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def _optuna(plot: Callable[..., go.Figure], *args: object, **kwargs: object) -> go.Figure | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "study has no completed trials" and experimental notes
        try:
            figure = plot(*args, **kwargs)
        except _UNDRAWABLE:
            return None
    return figure if figure.data else None


def _metric_target(study: optuna.Study) -> dict[str, object]:
    """Optuna's plots of one objective: the study's metric (the first of several objectives)."""
    name = f"val {metric_of(study).name}"
    if is_multi_objective(study):
        return {"target": value, "target_name": name}
    return {"target_name": name}


def optimization_history(study: optuna.Study) -> go.Figure | None:
    if not complete(study.get_trials(deepcopy=False)):
        return None
    return _optuna(optuna.visualization.plot_optimization_history, study, **_metric_target(study))


def parallel_coordinate(study: optuna.Study) -> go.Figure | None:
    trials = complete(study.get_trials(deepcopy=False))
    if len(trials) < 2 or not any(t.params for t in trials):
        return None
    return _optuna(optuna.visualization.plot_parallel_coordinate, study, **_metric_target(study))


def importance(study: optuna.Study) -> go.Figure | None:
    trials = complete(study.get_trials(deepcopy=False))
    if len(trials) < 2 or len({value(t) for t in trials}) < 2:
        return None
    return _optuna(optuna.visualization.plot_param_importances, study, **_metric_target(study))


def slices(study: optuna.Study) -> go.Figure | None:
    """One panel per param; Optuna puts a log axis under every log-sampled param."""
    if not complete(study.get_trials(deepcopy=False)):
        return None
    return _optuna(optuna.visualization.plot_slice, study, **_metric_target(study))


def pareto_front(study: optuna.Study, objectives: Sequence[str]) -> go.Figure | None:
    """Every complete trial by its objectives; the Pareto-optimal ones (what `search best`
    lists) in their own colour."""
    if not is_multi_objective(study) or not complete(study.get_trials(deepcopy=False)):
        return None
    metric = metric_of(study)
    names = [f"val {metric.name} ({'max' if metric.maximize else 'min'})"]
    names += [f"{o} ({'max' if COSTS[o] == 'maximize' else 'min'})" for o in objectives[1:]]
    figure = _optuna(optuna.visualization.plot_pareto_front, study, target_names=names)
    if figure is None:
        return None
    # Optuna shades both groups by trial number; one plain colour each tells them apart at once.
    dominated, front = (
        (figure.data[0], figure.data[1]) if len(figure.data) > 1 else (None, figure.data[0])
    )
    if dominated is not None:
        dominated.update(
            marker={"color": "#bbbbbb", "size": 8, "showscale": False}, name="dominated"
        )
        dominated.showlegend = True
    front.update(
        marker={"color": COLORS["best"], "size": 12, "showscale": False, "line": {"width": 1}},
        name="Pareto front",
        showlegend=True,
    )
    figure.update_layout(title="Pareto front")
    return figure


def timeline(study: optuna.Study) -> go.Figure | None:
    if not study.get_trials(deepcopy=False):
        return None
    return _optuna(optuna.visualization.plot_timeline, study)


def learning_curves(
    trials: Sequence[FrozenTrial], best: FrozenTrial | None, metric: Metric
) -> go.Figure | None:
    """The validation metric per epoch: complete trials solid, pruned dotted and ending in ×,
    best bold.

    Trials of one kind share a trace (with gaps between trials) so a thousand trials stay fast.
    """
    figure = go.Figure()
    for state, style in (
        (TrialState.COMPLETE, {"width": 1}),
        (TrialState.PRUNED, {"width": 1, "dash": "dot"}),
    ):
        xs: list[float | None] = []
        ys: list[float | None] = []
        text: list[str | None] = []
        ends_x, ends_y = [], []
        for t in trials:
            curve = epoch_values(t)
            if t.state != state or not curve:
                continue
            steps = sorted(curve)
            xs += [*steps, None]
            ys += [*(curve[s] for s in steps), None]
            text += [f"trial {t.number}"] * len(steps) + [None]
            ends_x.append(steps[-1])
            ends_y.append(curve[steps[-1]])
        if not xs:
            continue
        color = COLORS[state.name]
        figure.add_trace(
            go.Scattergl(
                x=xs,
                y=ys,
                text=text,
                mode="lines",
                name=f"{state.name.lower()} ({len(ends_x)})",
                line=dict(color=color, **style),
                opacity=0.45,
                hovertemplate="%{text}<br>epoch %{x}: %{y:.4f}<extra></extra>",
            )
        )
        if state == TrialState.PRUNED:
            figure.add_trace(
                go.Scattergl(
                    x=ends_x,
                    y=ends_y,
                    mode="markers",
                    name="pruned here",
                    marker={"symbol": "x", "color": color, "size": 7},
                    hoverinfo="skip",
                )
            )
    best_curve = epoch_values(best) if best is not None else {}
    if best is not None and best_curve:
        steps = sorted(best_curve)
        figure.add_trace(
            go.Scatter(
                x=steps,
                y=[best_curve[s] for s in steps],
                mode="lines+markers",
                name=f"best: trial {best.number}",
                line={"color": COLORS["best"], "width": 4},
            )
        )
    if not figure.data:
        return None
    figure.update_layout(title="Learning curves", xaxis_title="epoch", yaxis_title=metric.title)
    return figure


def by_param(trials: Sequence[FrozenTrial], param: str, metric: Metric) -> go.Figure | None:
    """Best validation metric of complete trials, one box per value of a categorical-like param."""
    groups: dict[object, list[float]] = defaultdict(list)
    for t in complete(trials):
        if param in t.params:
            groups[t.params[param]].append(value(t))
    if not groups:
        return None
    figure = go.Figure()
    for choice in sorted(groups, key=_sort_key):
        figure.add_trace(
            go.Box(y=groups[choice], name=str(choice), boxpoints="all", jitter=0.4, pointpos=0)
        )
    figure.update_layout(
        title=f"Validation {metric.name} by {param} (complete trials)",
        xaxis_title=param,
        yaxis_title=metric.title,
        showlegend=False,
    )
    return figure


def throughput_by_batch_size(trials: Sequence[FrozenTrial]) -> go.Figure | None:
    """Training images/s (mean over a trial's epochs) for every trial that ran an epoch."""
    groups: dict[object, list[float]] = defaultdict(list)
    for t in trials:
        speeds = trial_attrs(t).get("images_per_second") or []
        if speeds and "batch_size" in t.params:
            groups[t.params["batch_size"]].append(sum(speeds) / len(speeds))
    if not groups:
        return None
    figure = go.Figure()
    for choice in sorted(groups, key=_sort_key):
        figure.add_trace(go.Box(y=groups[choice], name=str(choice), boxpoints="all", pointpos=0))
    figure.update_layout(
        title="Training throughput by batch size (all trials)",
        xaxis_title="batch_size",
        yaxis_title="images / s",
        showlegend=False,
    )
    return figure


def compare_studies(studies: Sequence[optuna.Study]) -> list[go.Figure]:
    """Best-so-far against trial number and against cumulative training seconds, a line a study
    (each study's best in its own metric's direction)."""
    by_number, by_seconds = go.Figure(), go.Figure()
    metrics = {metric_of(study) for study in studies}
    title = next(iter(metrics)).title if len(metrics) == 1 else "validation metric"
    for study in studies:
        metric = metric_of(study)
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        best = math.nan
        numbers, seconds, values = [], [], []
        spent = 0.0
        for t in trials:
            spent += trial_attrs(t).get("seconds", 0.0)
            if t.state == TrialState.COMPLETE and (
                math.isnan(best) or metric.better(value(t), best)
            ):
                best = value(t)
            if not math.isnan(best):
                numbers.append(t.number)
                seconds.append(spent)
                values.append(best)
        name = study.study_name
        by_number.add_trace(go.Scatter(x=numbers, y=values, mode="lines", name=name))
        by_seconds.add_trace(go.Scatter(x=seconds, y=values, mode="lines", name=name))
    by_number.update_layout(
        title="Best so far by trial", xaxis_title="trial", yaxis_title=f"best {title}"
    )
    by_seconds.update_layout(
        title="Best so far by training time",
        xaxis_title="training seconds (cumulative)",
        yaxis_title=f"best {title}",
    )
    return [by_number, by_seconds]


def _sort_key(value: object) -> tuple[int, float | str]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))
