"""`search dashboard` serving optuna-dashboard on a study, and the notes trials leave for it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import search_command, tiny_space

from search.dashboard import trial_note


class Dashboard:
    """`search dashboard` in a subprocess on a free port; stopped with Ctrl-C."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [*search_command(), "dashboard", *args, "--port", "0"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        assert "optuna-dashboard for" in first, first + self.process.stderr.read()
        self.url = first.split(" at ")[1].strip()
        self.base = self.url.split("/dashboard")[0]

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return response.status, response.read()

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        _, stderr = self.process.communicate(timeout=30)
        return stderr


def _search(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*search_command(), *args], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.fixture
def tiny_study(tmp_path: Path, write_space) -> Path:
    space = write_space(tiny_space(epochs=2))
    assert _search(tmp_path, "run", "--space", str(space), "--trials", "4").returncode == 0
    return tmp_path


def test_trial_note_escapes_table_cells() -> None:
    note = trial_note("complete", {"optimizer": "a|b", "lr": 0.001234567}, [])
    assert "| optimizer | a\\|b |" in note and "| lr | 0.001235 |" in note


def test_dashboard_serves_the_study_on_loopback(tiny_study: Path) -> None:
    dashboard = Dashboard(tiny_study, "tiny")
    try:
        assert (
            dashboard.url.startswith("http://127.0.0.1:")
            and "/dashboard/studies/1" in dashboard.url
        )
        status, body = dashboard.get("/api/studies/1")
        data = json.loads(body)
        assert status == 200 and data["name"] == "tiny" and len(data["trials"]) == 4
        # Each trial's note: how it ended, its params, a row per epoch it ran.
        for trial in data["trials"]:
            note = trial["note"]["body"]
            assert note.startswith(("**complete: best val accuracy", "**pruned at epoch"))
            assert all(f"| {p['name']} |" in note for p in trial["params"])
            epoch_rows = [line for line in note.splitlines() if line[2:3].isdigit()]
            assert len(epoch_rows) == len(trial["intermediate_values"]) >= 1
    finally:
        assert "dashboard stopped" in dashboard.stop()
    assert dashboard.process.returncode == 0


def test_reading_the_dashboard_while_a_study_runs_breaks_neither(tiny_study: Path) -> None:
    dashboard = Dashboard(tiny_study, "tiny")
    run = subprocess.Popen(
        [*search_command(), "run", "--study", "tiny", "--trials", "10"],
        cwd=tiny_study,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    polls = 0
    deadline = time.monotonic() + 240
    try:
        while run.poll() is None and time.monotonic() < deadline:
            status, body = dashboard.get("/api/studies/1")
            assert status == 200 and json.loads(body)["name"] == "tiny"
            polls += 1
            time.sleep(0.1)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()  # a no-op once it has exited
        dashboard.stop()
    assert run.returncode == 0, stderr
    assert polls > 5
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tiny_study}/studies/tiny.db")
    assert len(study.trials) == 10


def test_dashboard_errors(cli, tiny_study: Path, tmp_path_factory) -> None:
    result = cli("dashboard", "ghost")
    assert result.returncode == 2 and "no study database at studies/ghost.db" in result.stderr
    result = _search(tmp_path_factory.mktemp("empty"), "dashboard")
    assert result.returncode == 2 and "no studies in studies/" in result.stderr
