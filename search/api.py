"""The Python API for notebooks and scripts: `search.run(...)` returns the study; `search.export`
writes its best model.

It is `search run` without the command line: the same checks, the same study in the same storage,
resumed when it exists. Settings are `search.runner.RunSettings`'s fields, by keyword; the space,
the model factory, the data and a training function of your own may be Python objects::

    import search
    study = search.run(space="my-space.toml", trials=50)
    study = search.run(space={"task": {"epochs": 5}, "params": {...}}, model=build,
                       data=(train, test), trials=50)
    study = search.run(space=..., train=my_training_function, trials=50)
    study.best_trial.params

With ``jobs`` > 1 the extra workers are spawned processes; objects defined in a notebook or in
``__main__`` reach them by value (cloudpickle), and the data through its cache file. A script
that runs them is re-imported by each: call it under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import dataclasses
import difflib
import html
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import optuna

from search import reporting
from search.errors import SettingsError
from search.exporting import Exported, ExportSettings
from search.exporting import export as _export
from search.given import Given
from search.runner import RunSettings
from search.runner import run as _run
from search.study import rdb_storage

_FIELDS = {f.name: f for f in dataclasses.fields(RunSettings)}
_PATHS = ("data_dir", "checkpoint_dir")


def run(
    settings: RunSettings | None = None,
    /,
    *,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> optuna.Study:
    """Run (or resume) a study until it has ``trials`` finished trials; return it.

    Args:
        settings: all settings at once, or None to give them as keywords.
        echo: where progress lines go (``print``; ``lambda line: None`` for silence).
        **options: `RunSettings` fields: ``space`` (a path, a dict in a space file's shape, or
            TOML text), ``trials``, ``study``, ``storage``, ``sampler``, ``pruner``, ``epochs``,
            ``seed``, ``device``, ``jobs``, ``data_mode`` ..., and objects: ``model`` (a
            factory, as ``task.model`` names one), ``data`` (``(train, test)``, each an
            ``(x, y)`` pair or a Dataset, or a path as ``task.data`` takes) or ``train`` (a
            training function ``fn(params, report)``, as ``task.train`` names one).

    Raises:
        SearchError: bad settings, space, data or model, with the same one-line message the
            command prints; no study is created or changed.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A worker process is importing the script that started it, and reached this call.
        raise SettingsError(
            "search.run ran again in a worker process as it imported your script: put the "
            'call under if __name__ == "__main__": (workers import the script for its objects)'
        )
    if settings is not None and options:
        raise SettingsError("give RunSettings or keyword settings, not both")
    if settings is None:
        for name in options:
            if name not in _FIELDS:
                close = difflib.get_close_matches(name, _FIELDS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SettingsError(f"search.run: unknown setting {name!r}{hint}")
        if "trials" not in options:
            raise SettingsError("search.run: trials=N is required (the study's target)")
        for name in _PATHS:
            if name in options:
                options[name] = Path(options[name]).expanduser()
        space = options.get("space")
        if space is not None and not isinstance(space, dict):
            if not isinstance(space, str | PathLike):
                raise SettingsError(
                    f"search.run: space= must be a path, a dict in a space file's shape or TOML "
                    f"text, got {type(space).__name__}"
                )
            options["space"] = str(space)
        settings = RunSettings(**options)
    # The run reports each trial itself (unless quiet); Optuna's own line per trial would repeat it.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        return _run(settings, echo=echo).study
    finally:
        optuna.logging.set_verbosity(verbosity)


def export(
    study: str | optuna.Study,
    *,
    out: str | PathLike,
    storage: str | None = None,
    trial: int | None = None,
    model: Callable[..., Any] | None = None,
    data: Any = None,
    train: Callable[..., Any] | None = None,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> Exported:
    """Retrain a study's best trial (or ``trial``) and write its model to ``out``, as
    ``search export`` does; a study made from Python objects needs them given again, and they
    are checked against what the study recorded.

    Args:
        **options: `search.exporting.ExportSettings` fields: ``epochs``, ``full_train``,
            ``device``, ``data_dir``, ``mlflow``.

    Raises:
        SearchError: the one line the command prints.
    """
    fields = {f.name for f in dataclasses.fields(ExportSettings)} - {"objects"}
    for name in options:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SettingsError(f"search.export: unknown setting {name!r}{hint}")
    if isinstance(study, optuna.Study):
        storage = storage or _url_of(study)
        study = study.study_name
    settings = ExportSettings(
        study=study,
        out=Path(out).expanduser(),
        storage=storage,
        trial=trial,
        objects=Given(model, data, train),
        **options,
    )
    return _export(settings, echo=echo)


@dataclass(frozen=True)
class ReportPage:
    """A study's report, written to ``path``; shown inline where it is a cell's result."""

    path: Path

    def _repr_html_(self) -> str:
        # The whole offline page in a frame of its own: its styles and scripts stay inside it.
        page = self.path.read_text(encoding="utf-8")
        return (
            f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width: 100%; '
            'height: 900px; border: 1px solid #ddd"></iframe>'
        )


def report(
    *studies: str | optuna.Study, storage: str | None = None, out: str | PathLike | None = None
) -> ReportPage:
    """Write the report page of one or more studies, as ``search report`` does (to
    ``reports/<study>.html`` unless ``out``), and return it; in a notebook it shows inline."""
    names = [s.study_name if isinstance(s, optuna.Study) else s for s in studies]
    loaded = [
        (s, _url_of(s)) if isinstance(s, optuna.Study) else reporting.load([s], storage)[0]
        for s in studies
    ]
    if not loaded:
        raise SettingsError("search.report: name at least one study")
    path = reporting.write(loaded, Path(out) if out is not None else reporting.default_path(names))
    return ReportPage(path)


def _url_of(study: optuna.Study) -> str:
    """The storage URL a study object was opened from (an RDB storage's)."""
    storage = rdb_storage(study)
    return storage.url if storage is not None else "memory"
