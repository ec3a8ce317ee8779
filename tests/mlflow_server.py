"""A real `mlflow server` on 127.0.0.1 for the tests: a SQLite backend and an artifact folder in a
temporary directory, started on a free port, stopped (or killed, to test a server that dies)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        self.log = (folder / "server.log").open("w")
        self.process = subprocess.Popen(
            [command, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
            + ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
            + ["--artifacts-destination", str(folder / "artifacts")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers too are stopped by one signal to the group
        )
        deadline = time.monotonic() + 120
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start: {self.logged()}")
            time.sleep(0.3)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def logged(self) -> str:
        return (self.folder / "server.log").read_text()[-3000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server and its workers (``SIGKILL``: as if its machine went away)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
