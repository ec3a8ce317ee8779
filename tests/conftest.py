"""Shared helpers: space files written for a test, and the CLI run in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from postgres import postgres  # noqa: F401  (a PostgreSQL server fixture for the scale-out tests)

# Tests stop the CLI and the dashboard with Ctrl-C (SIGINT). A shell starts a background job (`.ci/run
# &` in a script) with SIGINT ignored, and children inherit that, so a CLI started by such a test
# run would never see its Ctrl-C. With a handler here, every child starts with the default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` need a CUDA device: skipped, with the reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch sees none here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def toml(data: dict[str, Any]) -> str:
    """Render the small subset of TOML that space files use (tables of scalars, lists, inline tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + " }"
        return repr(v)

    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not (isinstance(v, dict) and k != "when")}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f'"{k}" = {value(v)}' for k, v in scalars.items())
        for k, v in body.items():
            if isinstance(v, dict) and k != "when":
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    return "\n".join(lines) + "\n"


def tiny_space(**task: Any) -> dict[str, Any]:
    """A digits space small enough for CLI tests: 2 epochs, depth 1-2, every optimizer."""
    return {
        "task": {"name": "digits", "model": "cnn", "epochs": 2, "val_fraction": 0.25, **task},
        "params": {
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "batch_size": {"type": "categorical", "choices": [64, 128]},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
            "momentum": {
                "type": "float",
                "low": 0.0,
                "high": 0.9,
                "when": {"optimizer": ["sgd", "rmsprop"]},
            },
            "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
            "depth": {"type": "int", "low": 1, "high": 2},
        },
    }


@pytest.fixture
def write_space(tmp_path: Path):
    def write(data: dict[str, Any] | str, name: str = "tiny") -> Path:
        path = tmp_path / "spaces" / f"{name}.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(data if isinstance(data, str) else toml(data), encoding="utf-8")
        return path

    return write


def search_command() -> list[str]:
    script = Path(sys.executable).with_name("search")
    return [str(script)] if script.exists() else [sys.executable, "-m", "search.cli"]


def tiny_study(folder: Path, trials: int, pruner: str) -> Path:
    """A real small study in ``folder``: the tiny digits space (3 epochs), trained by the CLI."""
    (folder / "tiny.toml").write_text(toml(tiny_space(epochs=3)))
    run = subprocess.run(
        [
            *search_command(),
            "run",
            "--space",
            "tiny.toml",
            "--trials",
            str(trials),
            "--pruner",
            pruner,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return folder


@pytest.fixture
def cli(tmp_path: Path):
    """Run `search ...` in a subprocess with the test's temporary folder as working directory."""

    def run(
        *args: str,
        timeout: float = 300,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run(
            [*search_command(), *args],
            check=False,
            cwd=cwd or tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
