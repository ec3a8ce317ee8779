"""`search report`: one self-contained HTML page per study (or comparing several studies).

The page opens offline: plotly.js is embedded once and every chart refers to it. Reading a study
needs its storage only; this module never imports torch.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import FrozenTrial, TrialState

from search import charts
from search import study as studies
from search.errors import StorageError
from search.summary import state_counts

REPORTS_DIR = Path("reports")


@dataclass(frozen=True)
class Facts:
    """What the summary says about one study, computed once from its trials."""

    study: optuna.Study
    url: str
    trials: list[FrozenTrial]
    settings: dict[str, Any]
    environment: dict[str, Any]
    metric: studies.Metric
    best: FrozenTrial | None
    training_seconds: float
    pruner_saved_seconds: float

    @classmethod
    def of(cls, study: optuna.Study, url: str) -> Facts:
        every = study.get_trials(deepcopy=False)
        trials = studies.shown(every)  # a configuration paused and continued: its last trial
        settings = study.user_attrs.get(studies.SETTINGS_ATTR, {})
        max_epochs = settings.get("epochs")
        saved = 0.0
        for t in trials:
            attrs = studies.trial_attrs(t)
            epoch_seconds = attrs.get("epoch_seconds") or []
            if t.state == TrialState.PRUNED and max_epochs and epoch_seconds:
                # Epochs the pruner spared, at this trial's own measured epoch time (its
                # seconds are per report: per epoch, or k per epoch).
                run = attrs.get("epochs_run", len(epoch_seconds))
                if run:
                    saved += (max_epochs - run) * sum(epoch_seconds) / run
        completed = charts.complete(trials)
        metric = studies.metric_of(study)
        return cls(
            study=study,
            url=url,
            trials=trials,
            settings=settings,
            environment=study.user_attrs.get(studies.ENVIRONMENT_ATTR, {}),
            metric=metric,
            best=(
                max(completed, key=lambda t: (metric.key(studies.value(t)), -t.number))
                if completed
                else None
            ),
            training_seconds=sum(studies.trial_attrs(t).get("seconds", 0.0) for t in every),
            pruner_saved_seconds=saved,
        )


def default_path(names: list[str]) -> Path:
    # Benchmark studies are named like bench-mnist1d/tpe+median/seed0: one file, not folders.
    return REPORTS_DIR / f"{'-vs-'.join(name.replace('/', '-') for name in names)}.html"


def load(names: list[str], storage: str | None) -> list[tuple[optuna.Study, str]]:
    """The named studies, each from ``storage`` or its own default SQLite file."""
    if not names:
        raise StorageError("name at least one study (search list shows them)")
    loaded = []
    for name in names:
        url = storage or studies.default_url(name)
        loaded.append((studies.load_existing(name, url), url))
    return loaded


def write(studies_and_urls: list[tuple[optuna.Study, str]], out: Path) -> Path:
    """Write the report page to ``out``."""
    return write_page(render([Facts.of(study, url) for study, url in studies_and_urls]), out)


def write_page(page: str, out: Path) -> Path:
    """Write ``page`` to ``out`` atomically: a reader never sees half a page."""
    if not out.parent.is_dir():
        if out.parent == REPORTS_DIR:
            out.parent.mkdir()
        else:
            raise StorageError(f"--out {out}: folder {out.parent} does not exist")
    partial = out.with_name(f".{out.name}.partial")
    try:
        partial.write_text(page, encoding="utf-8")
        partial.replace(out)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise StorageError(f"--out {out}: cannot write: {e.strerror or e}") from None
    return out


def render(all_facts: list[Facts]) -> str:
    """The whole page as a string."""
    names = [f.study.study_name for f in all_facts]
    body: list[str] = []
    if len(all_facts) > 1:
        body.append(section("Comparison", "", charts.compare_studies([f.study for f in all_facts])))
    for facts in all_facts:
        body.append(_study_sections(facts, heading=len(all_facts) > 1))
    return page(" vs ".join(names), body)


def page(title: str, sections: list[str]) -> str:
    """A whole offline page: plotly.js embedded once, sortable tables, the report's look."""
    return _PAGE.format(
        title=html.escape(title),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        plotly_js=plotly.offline.get_plotlyjs(),
        body="\n".join(sections),
        script=_TABLE_SCRIPT,
    )


def _study_sections(facts: Facts, heading: bool) -> str:
    study, trials = facts.study, facts.trials
    parts = []
    if heading:
        parts.append(f"<h2 class='study'>{html.escape(study.study_name)}</h2>")
    parts.append(section("Summary", _summary(facts), []))
    objectives = facts.settings.get("objectives", "accuracy").split(",")
    if len(objectives) > 1:
        parts.append(
            section(
                "Pareto front",
                "Trials no other trial beats on every objective are highlighted: the front "
                "`search best` lists, and the trials to choose among. Pruning is off in "
                "multi-objective studies, so every trial ran all its epochs.",
                [charts.pareto_front(study, objectives)],
            )
        )
    metric = facts.metric
    direction = "higher" if metric.maximize else "lower"
    parts.append(
        section(
            "Optimization history",
            f"Validation {metric.name} of each complete trial and the best so far ({direction} "
            "is better).",
            [charts.optimization_history(study)],
        )
    )
    parts.append(
        section(
            "Learning curves",
            f"Validation {metric.name} after every report. Pruned trials are dotted and end in "
            "×; the best trial is the bold green line.",
            [charts.learning_curves(trials, facts.best, metric)],
        )
    )
    parts.append(
        section(
            "Parallel coordinates",
            "Each line is a complete trial across the sampled hyperparameters, coloured by "
            f"validation {metric.name}.",
            [charts.parallel_coordinate(study)],
        )
    )
    parts.append(
        section(
            "Hyperparameter importance",
            f"How much of the variation in validation {metric.name} each hyperparameter "
            "explains (fANOVA, optuna.importance).",
            [charts.importance(study)],
        )
    )
    parts.append(
        section(
            "Slices",
            f"Validation {metric.name} against each hyperparameter on its own; log-sampled "
            "ones on log axes.",
            [charts.slices(study)],
        )
    )
    compared = ("optimizer", "lr_schedule", "depth", "batch_size")
    parts.append(
        section(
            "Comparisons",
            f"Validation {metric.name} by optimizer, learning-rate schedule, depth and batch "
            "size (where sampled); throughput by batch size.",
            [
                *(charts.by_param(trials, param, metric) for param in compared),
                charts.throughput_by_batch_size(trials),
            ],
        )
    )
    parts.append(
        section("Timeline", "When each trial ran, and how it ended.", [charts.timeline(study)])
    )
    parts.append(
        section("All trials", "Click a column heading to sort.", [], _trial_table(trials, metric))
    )
    return "\n".join(parts)


def section(title: str, intro: str, figures: list[go.Figure | None], extra: str = "") -> str:
    """A titled part of the page: an intro, its figures (two to a row) and any extra HTML."""
    drawn = []
    for figure in figures:
        if figure is None:
            continue
        # Optuna sizes some figures in pixels (the slice plot: 300 px a param); fit the page instead.
        figure.update_layout(template="plotly_white", width=None, autosize=True, height=420)
        drawn.append(
            "<div class='chart'>"
            + figure.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True})
            + "</div>"
        )
    if figures and not drawn:
        drawn.append("<p class='empty'>Not enough finished trials to draw this yet.</p>")
    return (
        f"<section><h3>{html.escape(title)}</h3>"
        + (f"<div class='intro'>{intro}</div>" if intro else "")
        + (f"<div class='grid'>{''.join(drawn)}</div>" if len(drawn) > 1 else "".join(drawn))
        + extra
        + "</section>"
    )


def _summary(facts: Facts) -> str:
    study, settings, env = facts.study, facts.settings, facts.environment
    rows = [
        ("study", study.study_name),
        ("storage", studies.describe(facts.url)),
        ("task", f"{settings.get('task', '?')}, model {settings.get('model', '?')}"),
        (
            "scoring",
            (
                f"{settings.get('kind', 'classification')}: validation {facts.metric.name}, "
                f"{facts.metric.direction}d"
            ),
        ),
        ("space", settings.get("space_source", "?")),
        (
            "search",
            (
                f"{settings.get('sampler', '?')} sampler, {settings.get('pruner', '?')} pruner, "
                f"seed {settings.get('seed', '?')}, up to {settings.get('epochs', '?')} epochs, "
                f"objectives {settings.get('objectives', 'accuracy')}"
            ),
        ),
        ("trials", f"{len(facts.trials)} in all: {state_counts(study)}"),
    ]
    if facts.best is not None:
        params = ", ".join(f"{k} = {_fmt(v)}" for k, v in facts.best.params.items())
        rows.append(
            (
                "best",
                (
                    f"trial {facts.best.number}: val {facts.metric.name} "
                    f"{studies.value(facts.best):.4f}"
                ),
            )
        )
        rows.append(("best params", params))
    else:
        rows.append(("best", "no complete trial yet"))
    rows.append(("training time", f"{facts.training_seconds:.1f} s"))
    rows.append(
        (
            "saved by pruning",
            (
                f"≈ {facts.pruner_saved_seconds:.1f} s (epochs not run × the "
                "trial's measured epoch time)"
            ),
        )
    )
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
        rows.append(
            (
                "device",
                f"{env.get('device')} ({env.get('device_name')})"
                + (f", CUDA {env['cuda']}" if env.get("cuda") else ""),
            )
        )
        rows.append(
            ("versions", versions + (f", git {env['git_sha'][:10]}" if env.get("git_sha") else ""))
        )
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table class='summary'>{cells}</table>"


def _trial_table(trials: list[FrozenTrial], metric: studies.Metric) -> str:
    param_names = sorted({name for t in trials for name in t.params})
    head = ["#", "state", f"val {metric.name}", *param_names, "epochs", "seconds", "reason"]
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        attrs = studies.trial_attrs(t)
        reason = attrs.get("fail_detail") or (
            f"pruned at epoch {studies.epochs_text(attrs.get('epochs_run', t.last_step))}"
            if t.state == TrialState.PRUNED
            else ""
        )
        cells = [
            (t.number, str(t.number)),
            (t.state.name, t.state.name),
            (
                t.values[0] if t.values else -1,
                f"{t.values[0]:.4f}" if t.values else "",
            ),
            *((t.params.get(p, ""), _fmt(t.params.get(p, ""))) for p in param_names),
            (attrs.get("epochs_run", 0), studies.epochs_text(attrs.get("epochs_run"))),
            (attrs.get("seconds", 0.0), f"{attrs.get('seconds', 0.0):.2f}"),
            (reason, reason),
        ]
        rows.append((t.state.name.lower(), cells))
    return sortable_table(head, rows)


def sortable_table(head: list[str], rows: list[tuple[str, list[tuple[Any, str]]]]) -> str:
    """A table the page's script sorts by column: each row is (CSS class, [(sort key, text)])."""
    body = "".join(
        (f"<tr class='{css}'>" if css else "<tr>")
        + "".join(
            f"<td data-sort='{html.escape(json.dumps(key))}'>{html.escape(text)}</td>"
            for key, text in cells
        )
        + "</tr>"
        for css, cells in rows
    )
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (
        f"<table class='trials sortable'><thead><tr>{header}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_TABLE_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, column) => {
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0];
    const ascending = th.dataset.order !== "asc";
    th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.order);
    th.dataset.order = ascending ? "asc" : "desc";
    const key = row => JSON.parse(row.cells[column].dataset.sort);
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = key(a), y = key(b);
      const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    });
    rows.forEach(row => body.appendChild(row));
  });
});
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>search report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
h1 {{ margin-bottom: 0; }} .generated {{ color: #777; margin-top: .2rem; }}
section {{ margin: 2rem 0; }} h2.study {{ border-top: 3px solid #1f77b4; padding-top: 1rem; }}
.intro {{ color: #555; margin-bottom: .5rem; }}
.grid {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }} .empty {{ color: #999; font-style: italic; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .25rem .6rem; text-align: left; }}
table.summary th {{ color: #555; font-weight: 600; vertical-align: top; }}
table.trials {{ font-size: .85rem; width: 100%; }} table.trials thead th {{ cursor: pointer;
  position: sticky; top: 0; background: #f4f4f4; border-bottom: 2px solid #ccc; }}
table.trials th[data-order=asc]::after {{ content: " ▲"; }}
table.trials th[data-order=desc]::after {{ content: " ▼"; }}
table.trials tr:nth-child(even) {{ background: #fafafa; }}
tr.pruned td:nth-child(2) {{ color: #ff7f0e; }} tr.fail td:nth-child(2) {{ color: #d62728; }}
tr.complete td:nth-child(2) {{ color: #1f77b4; }}
</style>
<script>{plotly_js}</script>
</head>
<body>
<h1>search report: {title}</h1>
<p class="generated">generated {generated}</p>
{body}
<script>{script}</script>
</body>
</html>
"""
