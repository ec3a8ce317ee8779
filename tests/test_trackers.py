"""TensorBoard and MLflow, written while a real study trains and read back with their own readers:
TensorBoard's event reader, and the client of a real `mlflow server` (SQLite backend) that these
tests start on 127.0.0.1 and stop; and that server killed while a study runs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import mlflow.pytorch
import optuna
import pytest
import torch
from conftest import search_command, tiny_space
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from search import study as studies
from search.trackers.background import Background, Item, describe


def _load(folder: Path, name: str = "tiny") -> optuna.Study:
    url = f"sqlite:///{folder / 'studies' / f'{name}.db'}"
    return optuna.load_study(study_name=name, storage=studies.open_storage(url, create=False))


def _hparams(run: EventAccumulator) -> dict[str, object]:
    content = run.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}


def test_tensorboard_holds_a_run_per_trial_with_its_reports_and_hparams(
    cli, tmp_path: Path, write_space
) -> None:
    space = write_space(tiny_space(epochs=2))
    first = cli("run", "--space", str(space), "--trials", "5", "--tensorboard", "tb")
    assert first.returncode == 0, first.stderr
    # A resume that names no folder keeps writing where the study was told to.
    again = cli("run", "--study", "tiny", "--trials", "7")
    assert again.returncode == 0, again.stderr
    study = _load(tmp_path)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 7 and {t.state for t in trials} == {
        TrialState.COMPLETE,
        TrialState.PRUNED,
    }
    for trial in trials:
        run = EventAccumulator(str(tmp_path / "tb" / "tiny" / f"trial-{trial.number}"))
        run.Reload()
        # Every report at its step, as the pruner saw it (4 reports per epoch by default).
        reported = {e.step: e.value for e in run.Scalars("val_accuracy")}
        assert reported == pytest.approx(trial.intermediate_values)
        epochs = {e.step: e.value for e in run.Scalars("epoch")}
        assert epochs == pytest.approx({step: step / 4 for step in trial.intermediate_values})
        assert (
            len(run.Scalars("train_loss")) == len(run.Scalars("images_per_second")) == len(reported)
        )
        hparams = _hparams(run)
        assert hparams["state"] == trial.state.name
        assert hparams.get("reason") == ("pruned" if trial.state == TrialState.PRUNED else None)
        assert {k: hparams[k] for k in trial.params} == pytest.approx(trial.params)
        assert hparams["epochs_run"] == studies.trial_attrs(trial)["epochs_run"]
        best = run.Scalars("best_val_accuracy")
        assert [e.value for e in best] == pytest.approx([max(trial.intermediate_values.values())])


def test_a_tracker_flag_without_its_extra_fails_before_a_study_exists(
    cli, tmp_path: Path, write_space
) -> None:
    space = write_space(tiny_space(epochs=1))
    # As if the extras were not installed: the modules cannot be found in this process.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tensorboard'] = None\nsys.modules['mlflow'] = None\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    for flag, value, extra in (
        ("--tensorboard", "tb", "tensorboard"),
        ("--mlflow", "sqlite:///mlflow.db", "mlflow"),
    ):
        result = cli("run", "--space", str(space), "--trials", "1", flag, value, env=env)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pip install 'search[{extra}]'" in lines[0], result.stderr
        assert flag in lines[0]
    assert not (tmp_path / "studies").exists() and not (tmp_path / "tb").exists()


def test_background_drops_calls_while_a_tracker_is_down_and_says_which() -> None:
    said: list[str] = []
    done: list[int] = []
    down = True

    def call(n: int) -> None:
        if down:
            raise ConnectionError("refused")
        done.append(n)

    background = Background("tracker", said.append, pause=0.3)
    background.submit([Item(1, "start")], lambda: call(1))
    background.submit([Item(1, "report")], lambda: call(2))
    background.submit([Item(1, "report", 3), Item(1, "end")], lambda: call(3))
    time.sleep(0.2)
    down = False
    time.sleep(0.3)  # the pause is over: the next call is tried, and goes through
    background.submit([Item(2, "start")], lambda: call(4))
    background.close()
    assert done == [4]
    assert len(said) == 2
    assert "did not answer (ConnectionError: refused)" in said[0]
    assert said[1].endswith(
        "not logged (ConnectionError: refused): trial 1 (start, 4 reports, end)"
    )
    assert describe([Item(None, "start"), Item(3, "end")]) == "the study (start), trial 3 (end)"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


def _runs(client: MlflowClient, study: str) -> dict[str, object]:
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None, f"no experiment {study}"
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def test_mlflow_holds_the_study_and_a_nested_run_per_trial(
    cli, tmp_path: Path, write_space, mlflow_server
) -> None:
    space = write_space(tiny_space(epochs=2))
    result = cli(
        "run", "--space", str(space), "--study", "tracked", "--trials", "5", "--reports-per-epoch",
        "2", "--mlflow", mlflow_server.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    study = _load(tmp_path, "tracked")
    client = MlflowClient(mlflow_server.url)
    runs = _runs(client, "tracked")
    parent = runs.pop("tracked")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["reports_per_epoch"] == "2"
    assert "space.lr" in parent.data.params and "env.versions.torch" in parent.data.tags
    assert set(runs) == {f"trial-{t.number}" for t in study.trials}
    for trial in study.trials:
        run = runs[f"trial-{trial.number}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["search.state"] == trial.state.name
        assert run.info.status == "FINISHED"
        assert {k: run.data.params[k] for k in trial.params} == {
            k: str(v) for k, v in trial.params.items()
        }
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert {m.step: m.value for m in history} == pytest.approx(trial.intermediate_values)
        epochs = client.get_metric_history(run.info.run_id, "epoch")
        assert sorted(m.value for m in epochs) == [s / 2 for s in sorted(trial.intermediate_values)]
        attrs = studies.trial_attrs(trial)
        assert run.data.metrics["seconds"] == pytest.approx(attrs["seconds"])
        assert run.data.metrics["param_count"] == attrs["param_count"]
        assert run.data.tags["search.device"] == attrs["device"]

    # The exported model, with its test accuracy and files, as a run of the study.
    exported = cli("export", "tracked", "--out", "model", "--mlflow", mlflow_server.url)
    assert exported.returncode == 0, exported.stderr
    export_run = _runs(client, "tracked")[f"export-trial-{study.best_trial.number}"]
    assert export_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert export_run.data.metrics["test_accuracy"] > 0
    logged = {a.path for a in client.list_artifacts(export_run.info.run_id, "files")}
    written = {f"files/{p.name}" for p in (tmp_path / "model").iterdir()}
    assert logged == written and "files/model.pt" in logged
    # And the TorchScript as an MLflow model, loaded back by MLflow's own pytorch flavour.
    model_uri = next(line for line in exported.stdout.splitlines() if "load_model(" in line)
    model_uri = model_uri.split("load_model(")[1].split(")")[0].strip("'")
    mlflow.set_tracking_uri(mlflow_server.url)
    loaded = mlflow.pytorch.load_model(model_uri)
    scripted = torch.jit.load(str(tmp_path / "model" / "model.torchscript.pt"))
    images = torch.rand(4, 1, 8, 8) * 16
    assert torch.equal(loaded(images), scripted(images))


def test_a_retried_trial_continues_as_a_run_that_names_the_one_it_continues(
    tmp_path: Path, write_space, mlflow_server
) -> None:
    space = write_space(tiny_space(epochs=30))
    command = [*search_command(), "run", "--space", str(space), "--study", "retried"]
    command += ["--trials", "3", "--pruner", "none", "--reports-per-epoch", "1", "--heartbeat", "1"]
    client = MlflowClient(mlflow_server.url)
    first = subprocess.Popen(
        [*command, "--mlflow", mlflow_server.url], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until trial 0 has reported a few epochs
            experiment = client.get_experiment_by_name("retried")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            trial_runs = [r for r in runs if r.info.run_name == "trial-0"]
            if (
                trial_runs
                and len(client.get_metric_history(trial_runs[0].info.run_id, "val_accuracy")) >= 3
            ):
                break
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    killed = {t.number for t in _load(tmp_path, "retried").trials if t.state == TrialState.RUNNING}
    assert killed, "the kill came between trials"
    time.sleep(3.5)  # three heartbeats: the killed trial is stale, and the resume retries it
    resumed = subprocess.run(
        command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    study = _load(tmp_path, "retried")
    runs = _runs(client, "retried")
    retries = [t for t in study.trials if studies.retried_from(t) in killed]
    assert retries
    for retry in retries:
        previous = runs[f"trial-{studies.retried_from(retry)}"]
        run = runs[f"trial-{retry.number}"]
        assert run.data.tags["search.continues"] == previous.info.run_id
        assert previous.info.status == "KILLED"
        assert run.info.status == "FINISHED" and run.data.tags["search.state"] == "COMPLETE"
        # It reports on from the epoch its checkpoint holds; together they cover every epoch.
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
        before = {m.step for m in client.get_metric_history(previous.info.run_id, "val_accuracy")}
        assert steps | before == set(range(1, 31)) and max(before) < 30


def test_a_study_finishes_when_its_mlflow_server_is_killed_mid_way(
    tmp_path: Path, write_space
) -> None:
    server = MlflowServer(tmp_path / "dying-server")
    space = write_space(tiny_space(epochs=6))
    run = subprocess.Popen(
        [*search_command(), "run", "--space", str(space), "--study", "cut", "--trials", "6"]
        + ["--pruner", "none", "--reports-per-epoch", "1", "--mlflow", server.url],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = MlflowClient(server.url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the first trial has reported
            experiment = client.get_experiment_by_name("cut")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if any(r.data.metrics.get("val_accuracy") is not None for r in runs):
                break
            time.sleep(0.2)
        server.stop(signal.SIGKILL)
        _, stderr = run.communicate(timeout=300)
    finally:
        run.kill()
        server.stop()
    assert run.returncode == 0, stderr
    study = _load(tmp_path, "cut")
    assert studies.count_finished(study) == 6
    assert all(
        t.state == TrialState.COMPLETE and len(t.intermediate_values) == 6 for t in study.trials
    )
    warnings = [line for line in stderr.splitlines() if "warning: mlflow" in line]
    assert warnings and "did not answer" in warnings[0], stderr
    assert any("not logged" in line and "trial 5" in line for line in warnings), stderr

    # The study still names the dead server: a resume warns and runs without it, or forgets it.
    command = [*search_command(), "run", "--study", "cut", "--trials"]
    resumed = subprocess.run(
        [*command, "7"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"warning: the study's --mlflow {server.url}: no server answers" in resumed.stderr
    forgot = subprocess.run(
        [*command, "8", "--mlflow", "none"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert forgot.returncode == 0 and "warning" not in forgot.stderr, forgot.stderr
    study = _load(tmp_path, "cut")
    assert (
        studies.count_finished(study) == 8 and "mlflow" not in study.user_attrs["search.trackers"]
    )
