"""optuna-dashboard on a study's storage, and the per-trial notes that make it worth opening."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from socketserver import ThreadingMixIn
from types import ModuleType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from search import study as studies
from search.errors import SettingsError, StorageError

if TYPE_CHECKING:
    from search.contract import EpochResult


def trial_note(
    outcome: str,
    params: dict[str, Any],
    history: Sequence[EpochResult],
    metric: str = "accuracy",
) -> str:
    """Markdown: how the trial ended, its params, and a row per report (per epoch, or k per
    epoch) with the validation ``metric``."""
    lines = [f"**{outcome}**", "", "| param | value |", "| --- | --- |"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in params.items()]
    lines += [
        "",
        f"| epoch | val {metric} | train loss | seconds | images/s |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.epoch:g} | {r.value:.4f} | {r.train_loss:.4f} | {r.seconds:.2f} | "
        f"{r.images_per_second:,.0f} |"
        for r in history
    ]
    return "\n".join(lines) + "\n"


def save_trial_note(trial: optuna.Trial, note: str) -> None:
    """Write a finished trial's note where optuna-dashboard reads it, as its first version.

    `optuna_dashboard.save_note` reads all of the study's system attrs twice (to find the next
    version and the chunks to clear), and every trial's note lives there, so each note it saves
    costs more than the last. A trial's note is written once, when it ends: version 1, nothing to
    clear. Only the writes are made, through the dashboard's own key scheme.
    """
    notes = _dashboard_notes()
    storage, study_id, trial_id = trial.storage, trial.study._study_id, trial._trial_id
    storage.set_study_system_attr(study_id, notes.note_ver_key(trial_id), 1)
    for key, chunk in notes.split_body(note, trial_id).items():
        storage.set_study_system_attr(study_id, key, chunk)


@functools.cache
def _dashboard_notes() -> ModuleType:
    """optuna-dashboard's `_note` module (its key scheme for notes), loaded from its file alone.

    Importing it through the package runs the package's own imports first (its web app, bottle,
    `optuna.importance` and with it scikit-learn, SciPy and pandas): two seconds of every worker
    process, longer than most trials. The module itself needs only Optuna.
    """
    package = importlib.util.find_spec("optuna_dashboard")
    path = Path(package.submodule_search_locations[0]) / "_note.py"
    spec = importlib.util.spec_from_file_location("search._optuna_dashboard_note", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def local_storage(name: str | None) -> str:
    """The storage URL to serve when none is given: the study's file, or the only one there is."""
    if name is not None:
        return studies.default_url(name)
    urls = studies.local_urls()
    if len(urls) == 1:
        return urls[0]
    if not urls:
        raise StorageError(f"no studies in {studies.STUDIES_DIR}/; run one first (search run)")
    raise StorageError(
        f"{len(urls)} study files in {studies.STUDIES_DIR}/: name a study or pass --storage"
    )


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # the dashboard fetches in parallel; Ctrl-C must not wait for them


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would bury the URL


def serve(
    name: str | None,
    storage_url: str | None,
    host: str,
    port: int,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve optuna-dashboard for the storage until interrupted; print the URL to open."""
    from optuna_dashboard import wsgi

    if not 0 <= port < 65536:
        raise SettingsError(f"--port {port}: must be between 0 (any free port) and 65535")
    url = storage_url or local_storage(name)
    storage = studies.open_storage(url, create=False)
    path = "/dashboard/"
    if name is not None:
        if name not in studies.study_names(storage):
            raise StorageError(f"no study {name!r} in {studies.describe(url)}")
        path += f"studies/{storage.get_study_id_from_name(name)}"
    try:
        server = make_server(
            host, port, wsgi(storage), server_class=_ThreadingServer, handler_class=_QuietHandler
        )
    except OSError as e:
        raise SettingsError(
            f"--host {host} --port {port}: cannot listen: {e.strerror or e}"
        ) from None
    shown_host = f"[{host}]" if ":" in host else host
    echo(
        f"optuna-dashboard for {studies.describe(url)} at http://{shown_host}:{server.server_port}{path}"
    )
    echo("Ctrl-C stops it")
    with server:
        server.serve_forever()


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")
