"""MLflow: an experiment named after the study, one run for the study and a nested run per trial.

The study's run holds its space, search settings and environment (params and tags); it is found by
its tags, so every command and worker on the study, on any machine, nests its trials under the same
one. A trial's run (``trial-N``) gets its params, per-report metrics at their step (the report
count: step k is the end of epoch 1 at k reports per epoch), its state and reason, and its costs.
A retry starts a run of its own that names the one it continues (``search.continues``) and
closes that one as KILLED if it was left running. Every call to the server goes through
`search.trackers.background`: a server that stops answering never fails or stalls a trial.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search import study as studies
from search.errors import SettingsError
from search.study import Metric, trial_attrs
from search.trackers.background import Background, Item
from search.trackers.base import Targets, Tracker

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from optuna.trial import FrozenTrial

    from search.contract import EpochResult

# A server that does not answer should cost seconds, not MLflow's minutes of retries; and the
# client should not print a link to every run it ends. A user's own settings win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

PARENT_TAG, EXPERIMENT_KIND_TAG = "mlflow.parentRunId", "mlflow.experimentKind"
KIND_TAG, STUDY_TAG, STUDY_KEY_TAG = "search.kind", "search.study", "search.study_key"
TRIAL_TAG, STATE_TAG, REASON_TAG = "search.trial", "search.state", "search.reason"
CONTINUES_TAG, RETRY_TAG = "search.continues", "search.retry_of"
# A trial's costs logged as metrics when it ends (the rest of its costs are per report).
COST_METRICS = (
    "seconds",
    "epochs_run",
    "param_count",
    "peak_memory_mb",
    "sampling_seconds",
    "pruning_seconds",
)
COST_TAGS = ("device", "data_mode", "seed")
SEND_EVERY = 1.0  # seconds: the most often a trial's reports are sent
MAX_METRICS_PER_CALL = 1000  # MLflow's limit for one log_batch
TORCHSCRIPT = "model.torchscript.pt"  # what `search export` writes


def client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def study_run(uri: str, study: str, record: dict[str, Any]) -> tuple[str, str]:
    """The study's experiment and run in ``uri``, made if missing; ``record`` is what the run
    holds: ``settings`` and ``space`` (params), ``environment`` and ``storage`` (tags).

    Raises:
        SettingsError: the tracking server did not answer.
    """
    from mlflow.entities import Param

    found_by = study_key(record["storage"], record["uid"])
    try:
        mlflow = client(uri)
        experiment_id = _experiment(mlflow, study)
        run_id = _find_study_run(mlflow, experiment_id, found_by)
        if run_id is None:
            tags = {
                KIND_TAG: "study",
                STUDY_TAG: study,
                STUDY_KEY_TAG: found_by,
                "search.storage_url": studies.describe(record["storage"]),
                **{f"env.{key}": str(value) for key, value in _flat(record["environment"]).items()},
            }
            made = mlflow.create_run(experiment_id, run_name=study, tags=tags).info.run_id
            params = [Param(key, _text(value)) for key, value in record["settings"].items()]
            params += [
                Param(f"space.{key}", _text(value)) for key, value in record["space"].items()
            ]
            mlflow.log_batch(made, params=params)
            # Two commands that made one at once both keep the first made; the other goes.
            run_id = _find_study_run(mlflow, experiment_id, found_by)
            if run_id != made:
                mlflow.delete_run(made)
        else:
            mlflow.update_run(run_id, status="RUNNING")
        mlflow.set_tag(run_id, "search.target", str(record["target"]))
    except Exception as error:  # whatever MLflow raises: one line, exit 2
        raise SettingsError(f"--mlflow {uri}: {_first_line(error)}") from None
    return experiment_id, run_id


def _experiment(mlflow: MlflowClient, study: str) -> str:
    """The id of the experiment named after the study, made if missing."""
    experiment = mlflow.get_experiment_by_name(study)
    if experiment is not None:
        return experiment.experiment_id
    # MLflow 3's UI opens an experiment of this kind on its training runs, not on GenAI traces.
    return mlflow.create_experiment(study, tags={EXPERIMENT_KIND_TAG: "custom_model_development"})


def study_key(url: str, uid: str | None) -> str:
    """What tells apart studies of one name: their storage (a SQLite file by its absolute path,
    wherever the command ran; no password) and the study's own id, so that a study deleted and
    made again under its old name gets a run of its own. Studies made before the id have none."""
    path = studies.sqlite_path(url)
    where = f"sqlite:///{path.resolve()}" if path is not None else studies.describe(url)
    return hashlib.sha256(f"{where} {uid or ''}".encode()).hexdigest()[:16]


def _find_study_run(mlflow: MlflowClient, experiment_id: str, found_by: str) -> str | None:
    runs = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = 'study' and tags.`{STUDY_KEY_TAG}` = '{found_by}'",
        order_by=["attributes.start_time ASC", "attributes.run_id ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_export(
    uri: str, study: str, storage: str, uid: str | None, out: Path, metrics: dict[str, Any]
) -> tuple[str, str | None]:
    """Log an exported model as a run of the study's experiment (nested under the study's run when
    there is one): its params, test and validation metric, every file it wrote (under
    ``files/``) and its TorchScript as an MLflow model. The run's id and the model's URI.

    Raises:
        SettingsError: the tracking server did not answer (the files stay in ``out``).
    """
    from mlflow.entities import Metric, Param

    try:
        mlflow = client(uri)
        experiment_id = _experiment(mlflow, study)
        tags = {KIND_TAG: "export", STUDY_TAG: study, TRIAL_TAG: str(metrics["trial"])}
        parent = _find_study_run(mlflow, experiment_id, study_key(storage, uid))
        if parent is not None:
            tags[PARENT_TAG] = parent
        run_id = mlflow.create_run(
            experiment_id, run_name=f"export-trial-{metrics['trial']}", tags=tags
        ).info.run_id
        now = _millis()
        metric = metrics.get("metric", "accuracy")
        values = {
            name: float(metrics[name])
            for name in (f"test_{metric}", f"val_{metric}", f"trial_val_{metric}", "seconds")
            if isinstance(metrics.get(name), int | float)
        }
        params = {
            **metrics["params"],
            "epochs": metrics["epochs"],
            "full_train": metrics["full_train"],
        }
        mlflow.log_batch(
            run_id,
            metrics=[Metric(name, value, now, 0) for name, value in values.items()],
            params=[Param(name, _text(value)) for name, value in params.items()],
        )
        mlflow.log_artifacts(run_id, str(out), artifact_path="files")
        model_uri = _log_torchscript(uri, run_id, out / TORCHSCRIPT)
        mlflow.set_terminated(run_id, "FINISHED")
    except Exception as error:  # whatever MLflow raises: one line; the files are written
        raise SettingsError(
            f"--mlflow {uri}: the model was not logged ({_first_line(error)}); its files are in {out}"
        ) from None
    return run_id, model_uri


def _log_torchscript(uri: str, run_id: str, path: Path) -> str | None:
    """The TorchScript file as an MLflow model of the pytorch flavour (``mlflow.pytorch.load_model``
    gives it back); None where the export skipped TorchScript (a model it cannot capture)."""
    if not path.exists():
        return None
    import mlflow
    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        logged = mlflow.pytorch.log_model(
            torch.jit.load(str(path)),
            name="model",
            serialization_format="pickle",  # MLflow's default, pt2, takes no ScriptModule
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    return logged.model_uri


def check_answers(uri: str) -> None:
    """Fail at once, before minutes of retraining, where nothing answers at ``uri``.

    Raises:
        SettingsError: it did not answer.
    """
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as error:  # whatever MLflow raises: one line, exit 2
        raise SettingsError(f"--mlflow {uri}: {_first_line(error)}") from None


def end_study_run(targets: Targets, complete: bool) -> None:
    """Close the study's run once the study has its target (a later resume reopens it)."""
    if targets.mlflow and targets.mlflow_study_run and complete:
        try:
            client(targets.mlflow).set_terminated(targets.mlflow_study_run, "FINISHED")
        except Exception as error:  # the study itself is done and saved
            print(
                f"warning: mlflow {targets.mlflow}: study run not closed ({_first_line(error)})",
                file=sys.stderr,
            )


class MlflowTracker(Tracker):
    """A worker's trials as nested runs of the study's run."""

    def __init__(
        self, targets: Targets, study: str, echo: Callable[[str], None], metric: Metric
    ) -> None:
        assert targets.mlflow and targets.mlflow_experiment and targets.mlflow_study_run
        self.metric = metric
        self.uri = targets.mlflow
        self.experiment = targets.mlflow_experiment
        self.study_run = targets.mlflow_study_run
        self.study = study
        self._client: MlflowClient | None = None  # made on the background thread: mlflow
        self._runs: dict[int, str] = {}  # trial number -> run id, touched by the thread only
        self._started: set[int] = set()  # trials started by this worker, on the trial loop
        # On the trial loop too: reports not yet sent, per trial, and when it last sent some.
        self._pending: dict[int, list[list[tuple[str, float, int, int]]]] = {}
        self._sent: dict[int, float] = {}
        self._background = Background(f"mlflow {self.uri}", echo)

    @property
    def mlflow(self) -> MlflowClient:
        if self._client is None:
            self._client = client(self.uri)  # importing mlflow takes seconds: not in the trial
        return self._client

    def started(self, number: int, params: dict[str, Any], previous: int | None) -> None:
        now = _millis()
        self._started.add(number)
        self._background.submit(
            [Item(number, "start")], lambda: self._start(number, params, previous, now)
        )

    def _start(self, number: int, params: dict[str, Any], previous: int | None, now: int) -> None:
        from mlflow.entities import Param

        tags = {PARENT_TAG: self.study_run, STUDY_TAG: self.study, KIND_TAG: "trial"}
        tags[TRIAL_TAG] = str(number)
        if previous is not None:
            tags[RETRY_TAG] = str(previous)
            continued = self._trial_run(previous)
            if continued is not None:
                tags[CONTINUES_TAG] = continued.info.run_id
                if continued.info.status == "RUNNING":  # its worker died mid-trial
                    self.mlflow.set_terminated(continued.info.run_id, "KILLED")
        run = self.mlflow.create_run(
            self.experiment, start_time=now, tags=tags, run_name=f"trial-{number}"
        )
        self._runs[number] = run.info.run_id
        self.mlflow.log_batch(
            run.info.run_id, params=[Param(key, _text(value)) for key, value in params.items()]
        )

    def _trial_run(self, number: int) -> Any:
        runs = self.mlflow.search_runs(
            [self.experiment],
            filter_string=(
                f"tags.`{PARENT_TAG}` = '{self.study_run}' and tags.`{TRIAL_TAG}` = '{number}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def reported(self, number: int, result: EpochResult) -> None:
        now, step = _millis(), result.step
        values = {
            f"val_{self.metric.name}": result.value,
            "train_loss": result.train_loss,
            "images_per_second": result.images_per_second,
            "epoch": float(result.epoch),
            "report_seconds": result.seconds,
            **result.metrics,  # a training function's own numbers
        }
        self._pending.setdefault(number, []).append(
            [(key, value, now, step) for key, value in values.items()]
        )
        # At most one call a second per trial: reports that come faster wait for the next one
        # (or the trial's end), so that a study of short trials does not flood the server.
        if time.monotonic() - self._sent.get(number, -math.inf) >= SEND_EVERY:
            self._send(number, "report")

    def _send(
        self,
        number: int,
        what: str,
        extra: list[tuple[str, float, int, int]] | None = None,
        tags: dict[str, str] | None = None,
        then: Callable[[str], None] | None = None,
    ) -> None:
        """Queue one call that logs the trial's pending reports, ``extra`` and ``tags``."""
        reports = self._pending.pop(number, [])
        metrics = [metric for report in reports for metric in report] + (extra or [])
        self._sent[number] = time.monotonic()

        def log() -> None:
            from mlflow.entities import Metric, RunTag

            run_id = self._runs[number]
            tagged = [RunTag(key, value) for key, value in (tags or {}).items()]
            for start in range(0, max(len(metrics), 1), MAX_METRICS_PER_CALL):
                chunk = metrics[start : start + MAX_METRICS_PER_CALL]
                self.mlflow.log_batch(
                    run_id, metrics=[Metric(*metric) for metric in chunk], tags=tagged
                )
                tagged = []
            if then is not None:
                then(run_id)

        items = [Item(number, "report", len(reports))] if reports else []
        if what != "report":
            items.append(Item(number, what))
        self._background.submit(items, log)

    def finished(self, trial: FrozenTrial) -> None:
        if trial.number not in self._started:
            return  # it never started training (a surplus trial)
        self._started.discard(trial.number)
        attrs = trial_attrs(trial)
        now = _millis()
        step = max(trial.intermediate_values, default=0)
        values = {
            name: float(attrs[name])
            for name in COST_METRICS
            if isinstance(attrs.get(name), int | float)
        }
        if trial.values:
            values["value"] = trial.values[0]
        tags = {STATE_TAG: trial.state.name, REASON_TAG: trial.user_attrs.get("fail_reason") or ""}
        if attrs.get("fail_detail"):
            tags["search.fail_detail"] = str(attrs["fail_detail"])[:5000]
        tags.update({f"search.{name}": str(attrs[name]) for name in COST_TAGS if name in attrs})
        status = "FAILED" if trial.state.name == "FAIL" else "FINISHED"

        def terminate(run_id: str) -> None:
            self.mlflow.set_terminated(run_id, status, end_time=now)
            del self._runs[trial.number]

        extra = [(name, value, now, step) for name, value in values.items()]
        self._send(trial.number, "end", extra, tags, then=terminate)
        self._sent.pop(trial.number, None)

    def close(self) -> None:
        self._background.close()


def _millis() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # MLflow's longest param value


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    if "NewConnectionError" in text or "Connection refused" in text:
        return "no server answers there (connection refused)"
    if "timed out" in text.lower():
        return "the server did not answer in time"
    return text.splitlines()[0][:300] if text else type(error).__name__
