"""The Python API for notebooks and scripts: `search.run(space=..., trials=...)` returns the study.

It is `search run` without the command line: the same checks, the same study in the same storage,
resumed when it exists. Settings are `search.runner.RunSettings`'s fields, by keyword::

    import search
    study = search.run(space="my-space.toml", trials=50)
    study.best_trial.params

With ``jobs`` > 1 the extra workers are spawned processes, which re-import the calling script: in
a script, call it under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from search.errors import SettingsError
from search.runner import RunSettings
from search.runner import run as _run

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
        **options: `RunSettings` fields: ``space``, ``trials``, ``study``, ``storage``,
            ``sampler``, ``pruner``, ``epochs``, ``seed``, ``device``, ``jobs``, ``data_mode`` ...

    Raises:
        SearchError: bad settings, space, data or model, with the same one-line message the
            command prints; no study is created or changed.
    """
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
        if options.get("space") is not None:
            options["space"] = str(options["space"])
        settings = RunSettings(**options)
    # The run reports each trial itself (unless quiet); Optuna's own line per trial would repeat it.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _run(settings, echo=echo).study
    finally:
        optuna.logging.set_verbosity(verbosity)
