"""The `search bench hpo` page: strategies' IQM best-so-far curves with bootstrap bands, and a table.

Same look as `search report` (one offline file, plotly.js embedded once); never imports torch.
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.colors
import plotly.graph_objects as go

from search import reporting
from search import study as studies
from search.bench import curves
from search.bench.hpo import ENOUGH_SEEDS, Comparison, Strategy

_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def render(comparison: Comparison) -> str:
    settings = comparison.settings
    metric = comparison.metric
    intro = (
        f"{len(comparison.strategies)} strategies × {settings.seeds} seeds of task "
        f"{comparison.task} (model {comparison.model}, up to {comparison.epochs} epochs), from "
        f"{html.escape(studies.describe(comparison.url))}. A strategy named "
        "SAMPLER+PRUNER:Kx@N reports K times per epoch and runs N trials. Lines are the "
        f"interquartile mean over seeds of the best validation {metric.name} found so far "
        f"({'highest' if metric.maximize else 'lowest'}), against "
        "cost: each trial's training seconds plus its sampler's and pruner's own; bands are "
        f"95 % percentile-bootstrap intervals over seeds. The {metric.name} axis shows where most "
        "of the curves are (double-click a chart to see all of it)."
    )
    sections = [
        reporting.section(
            "Headline",
            f"<p class='headline'><strong>{html.escape(comparison.headline())}</strong></p>",
            [],
        ),
        *_evidence_section(comparison),
        reporting.section(
            "Best so far",
            intro,
            [
                _curves_figure(comparison, by="seconds"),
                _curves_figure(comparison, by="trials"),
            ],
        ),
        reporting.section(
            f"Time to the reference's {metric.name}",
            f"What each seed spent until its best first reached {comparison.reference}'s final "
            f"IQM ({comparison.shown(_reference(comparison).to_target.target):.4f}), or all it "
            f"spent if it never did; the IQM over seeds as a multiple of {comparison.reference}'s own (below 1 is "
            "cheaper), with its paired-bootstrap 95 % interval. Each bar names the seeds that "
            f"reached it; a faded bar reached it on fewer than {ENOUGH_SEEDS:.0%} of them, and is "
            "cheap partly because a seed that never reaches it is charged only what it spent.",
            [_ratio_figure(comparison)],
        ),
        reporting.section(
            "All strategies",
            f"Final best: IQM over seeds [95 % CI]. Test {metric.name}: each seed's best trial "
            "retrained with its own seed and scored once on the test set (the only use of the "
            "test set); mean and range over seeds. Click a column heading to sort.",
            [],
            _table(comparison),
        ),
    ]
    return reporting.page(settings.prefix, sections)


def _reference(comparison: Comparison) -> Strategy:
    return next(s for s in comparison.strategies if s.name == comparison.reference)


def _styles(comparison: Comparison) -> dict[str, tuple[str, str]]:
    """A colour per sampler and a dash per pruner (with its reports and trials), so the grid of
    strategies reads at once."""
    palette = plotly.colors.qualitative.D3
    samplers = list(dict.fromkeys(s.spec.sampler for s in comparison.strategies))
    pruners = list(dict.fromkeys(s.name.split("+", 1)[1] for s in comparison.strategies))
    return {
        s.name: (
            palette[samplers.index(s.spec.sampler) % len(palette)],
            _DASHES[pruners.index(s.name.split("+", 1)[1]) % len(_DASHES)],
        )
        for s in comparison.strategies
    }


def _evidence_section(comparison: Comparison) -> list[str]:
    evidence = comparison.evidence
    if evidence is None or not evidence.at:
        return []
    rows = [
        (
            "",
            [
                (epochs, f"{epochs:g}"),
                (rho.value, f"{rho.value:.2f} [{rho.low:.2f}–{rho.high:.2f}]"),
            ],
        )
        for epochs, rho in evidence.at.items()
    ]
    return [
        reporting.section(
            "What pruning can save",
            f"Over the {evidence.trials} complete trials of {evidence.strategy} (random "
            "configurations trained to the end): Spearman's rank correlation between each "
            f"configuration's validation {comparison.metric.name} after a number of epochs and "
            "its final result, with a 95 % bootstrap interval over the configurations. Near 1, "
            "stopping there would rank configurations as training them through does: the bound "
            "on what any pruner can save on this task.",
            [],
            reporting.sortable_table(["after epochs", "Spearman's rho [95% CI]"], rows),
        )
    ]


def _curves_figure(comparison: Comparison, by: str) -> go.Figure:
    figure = go.Figure()
    styles = _styles(comparison)
    lows: list[float] = []  # each curve's worse quartile, in the metric's units
    bests: list[float] = []
    for strategy in comparison.strategies:
        seeds = strategy.by_seconds if by == "seconds" else strategy.by_trials
        grid = curves.grid_of(seeds)
        matrix = np.stack([c.at(grid) for c in seeds])
        resamples = curves.resample_indices(len(seeds), np.random.default_rng(0))
        middle, low, high = curves.band(matrix, resamples)
        if not comparison.metric.maximize:  # scores back in the metric's units
            middle, low, high = -middle, -high, -low
        shown = ~np.isnan(middle)
        if shown.any():
            # Where most of the curve is: its worse quartile, and its best.
            worse = 25 if comparison.metric.maximize else 75
            lows.append(float(np.percentile(middle[shown], worse)))
            bests.append(float(comparison.metric.best(middle[shown].tolist())))
        x = grid[shown]
        colour, dash = styles[strategy.name]
        upper_x, upper_y = _steps(x, high[shown])
        lower_x, lower_y = _steps(x, low[shown])
        figure.add_trace(
            go.Scatter(
                x=upper_x + lower_x[::-1],
                y=upper_y + lower_y[::-1],
                fill="toself",
                fillcolor=_transparent(colour),
                mode="lines",
                line={"width": 0},
                hoverinfo="skip",
                legendgroup=strategy.name,
                showlegend=False,
            )
        )
        figure.add_trace(
            go.Scatter(
                x=x.tolist(),
                y=middle[shown].tolist(),
                name=strategy.name,
                legendgroup=strategy.name,
                line={"color": colour, "dash": dash, "shape": "hv"},
                mode="lines",
            )
        )
    figure.update_layout(
        title="by cumulative cost" if by == "seconds" else "by trial",
        xaxis_title="training, sampler and pruner seconds (log)" if by == "seconds" else "trials",
        yaxis_title=f"best validation {comparison.metric.name} (IQM)",
    )
    if by == "seconds":
        spent = np.concatenate([c.costs for s in comparison.strategies for c in s.by_seconds])
        spent = spent[spent > 0]  # a trial that failed at once may have cost nothing
        axis = _log_ticks(spent.min(), spent.max()) if len(spent) else {"type": "log"}
        figure.update_xaxes(**axis)
    if lows:
        # The first few trials span the whole range; what tells strategies apart is near the best.
        if comparison.metric.name == "accuracy":
            figure.update_yaxes(range=[max(0.0, min(lows) - 0.01), 1.0])
        else:
            ends = sorted(
                [
                    comparison.metric.best(bests),
                    min(lows) if comparison.metric.maximize else max(lows),
                ]
            )
            pad = 0.05 * (ends[1] - ends[0]) or 0.01
            figure.update_yaxes(range=[ends[0] - pad, ends[1] + pad])
    return figure


def _ratio_figure(comparison: Comparison) -> go.Figure:
    reached = [s for s in comparison.strategies if np.isfinite(s.to_target.ratio.value)]
    reached.sort(key=lambda s: s.to_target.ratio.value)
    styles = _styles(comparison)
    seeds = comparison.settings.seeds
    # Giving up early looks cheap here (see the section's text): labels count the seeds that got there.
    # A band's upper end may be "never" (a resample that did not reach): draw it to the axis edge.
    finite_highs = [s.to_target.ratio.high for s in reached if np.isfinite(s.to_target.ratio.high)]
    cap = max([1.0, *finite_highs]) * 1.5
    figure = go.Figure(
        go.Bar(
            x=[s.to_target.ratio.value for s in reached],
            y=[f"{s.name} ({round(s.to_target.reached * seeds)}/{seeds} seeds)" for s in reached],
            orientation="h",
            marker_color=[styles[s.name][0] for s in reached],
            marker_opacity=[1.0 if s.to_target.reached >= ENOUGH_SEEDS else 0.35 for s in reached],
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [
                    min(s.to_target.ratio.high, cap) - s.to_target.ratio.value for s in reached
                ],
                "arrayminus": [s.to_target.ratio.value - s.to_target.ratio.low for s in reached],
            },
        )
    )
    figure.add_vline(x=1, line_dash="dash", line_color="#777")
    figure.update_layout(
        xaxis_title=f"cost to target ÷ {comparison.reference}'s (log)",
        yaxis={"autorange": "reversed"},
    )
    lowest = min([s.to_target.ratio.low for s in reached if s.to_target.ratio.low > 0], default=1.0)
    figure.update_xaxes(**_log_ticks(lowest, cap, suffix="×"))
    return figure


def _log_ticks(low: float, high: float, suffix: str = "") -> dict:
    """A log axis ticked at 1, 2, 3 and 5 times each power of ten from ``low``'s to ``high``'s
    (Plotly draws those in its range), each labelled in full: Plotly's own labels 0.2 and 0.3 as
    a bare "2" and "3" beside the "1" of 1.0, which on a ratio axis reads as 2× and 3×."""
    ticks = [
        round(mantissa * 10.0**power, 12)
        for power in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        for mantissa in (1, 2, 3, 5)
    ]
    return {"type": "log", "tickvals": ticks, "ticktext": [f"{t:g}{suffix}" for t in ticks]}


def _table(comparison: Comparison) -> str:
    head = [
        "strategy",
        "final best",
        "s to target",
        f"× {comparison.reference}",
        f"× {comparison.reference}, training s only",
        "seeds reaching",
        "epochs saved by pruning",
        "training s per seed",
        "sampler + pruner s per seed",
        f"test {comparison.metric.name} of best",
    ]
    rows = []
    for s in comparison.strategies:
        final, cost, ratio = comparison.shown_interval(s.final), s.to_target.cost, s.to_target.ratio
        training = s.to_target_training.ratio
        tests = s.test_values
        cells = [
            (s.name, s.name),
            (final.value, f"{final.value:.4f} [{final.low:.4f}–{final.high:.4f}]"),
            (
                _key(cost.value),
                f"{_num(cost.value, '.1f')} [{_num(cost.low, '.1f')}–{_num(cost.high, '.1f')}]",
            ),
            (_key(ratio.value), _interval(ratio)),
            (_key(training.value), _interval(training)),
            (s.to_target.reached, f"{s.to_target.reached:.0%}"),
            (s.epochs_saved, f"{100 * s.epochs_saved:.0f} %"),
            (s.training_seconds, f"{s.training_seconds:.1f}"),
            (s.search_seconds, f"{s.search_seconds:.1f}"),
            (
                float(np.mean(tests)) if tests else -1,
                f"{np.mean(tests):.4f} ({min(tests):.4f}–{max(tests):.4f})" if tests else "",
            ),
        ]
        rows.append(("", cells))
    return reporting.sortable_table(head, rows)


def table_lines(comparison: Comparison) -> list[str]:
    """The table as plain text, for the terminal."""
    rows = [
        [
            "strategy",
            "final best [95% CI]",
            "s to target",
            f"× {comparison.reference} [95% CI]",
            "× (training s)",
            "seeds",
            "pruned",
            f"test {comparison.metric.name}",
        ]
    ]
    for s in comparison.strategies:
        final = comparison.shown_interval(s.final)
        rows.append(
            [
                s.name,
                f"{final.value:.4f} [{final.low:.4f}–{final.high:.4f}]",
                _num(s.to_target.cost.value, ".1f"),
                _interval(s.to_target.ratio),
                _num(s.to_target_training.ratio.value, ".2f"),
                f"{round(s.to_target.reached * len(s.by_seconds))}/{len(s.by_seconds)}",
                f"{100 * s.epochs_saved:.0f} %",
                f"{np.mean(s.test_values):.4f}" if s.test_values else "-",
            ]
        )
    lines = _aligned(rows)
    evidence = comparison.evidence
    if evidence is not None and evidence.at:
        lines += [
            "",
            (
                f"rank agreement with the final result ({evidence.strategy}, "
                f"{evidence.trials} trials; Spearman [95% CI]):"
            ),
        ]
        lines += _aligned(
            [["  after epochs", "rho"]]
            + [
                [f"  {epochs:g}", f"{rho.value:.2f} [{rho.low:.2f}–{rho.high:.2f}]"]
                for epochs, rho in evidence.at.items()
            ]
        )
    return lines


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _interval(value: curves.Interval) -> str:
    return f"{_num(value.value, '.2f')} [{_num(value.low, '.2f')}–{_num(value.high, '.2f')}]"


def _steps(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Corner points of a step function that holds each y until the next x (a band's outline)."""
    xs = np.repeat(x, 2)[1:]
    ys = np.repeat(y, 2)[:-1]
    return xs.tolist(), ys.tolist()


def _num(value: float, spec: str) -> str:
    return format(value, spec) if np.isfinite(value) else "never"


def _key(value: float) -> float | str:
    # JSON has no infinity; "never" sorts after every number in the page's sort script.
    return value if np.isfinite(value) else "never"


def _transparent(colour: str) -> str:
    red, green, blue = plotly.colors.hex_to_rgb(colour)
    return f"rgba({red},{green},{blue},0.15)"
