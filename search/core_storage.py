"""Optuna's RDB storage with the calls every trial makes done in SQLAlchemy Core, not the ORM.

Each trial reads the study's trials twice (Optuna's incremental reads, before it is created and
for its sampler), reads itself twice (at ask and at tell), writes each param and each report,
and writes its attrs and its note. Through the ORM each call is a session, a query per table and
an object per row: 1–5 ms on a 2-core CPU, most of what a short trial spends outside its
training. The same statements through Core, on the same engine and pool, built once and bound
per call, take a fraction of that. `CoreStorage` overrides those calls alone: `get_trial`;
`_get_trials`, which Optuna's trial cache calls; `_set_trial_param`;
`set_trial_intermediate_value`; the trial attr writes; `set_study_system_attr`, where the notes
live; and `record_heartbeat`. It runs them on the same tables (Optuna's own table objects, so
the columns and their types, enums and datetimes, are Optuna's), with the same checks (a finished
trial is not updated, a param keeps its distribution) and the same errors (`KeyError`,
`UpdateFinishedTrialError`, `StorageInternalError` for a failed transaction). Everything else
(studies, creating trials, states and values, the stale check) is Optuna's own code.

The calls follow one schema version, `SCHEMA`, and the writes upsert on SQLite and PostgreSQL
(as Optuna's do): with an Optuna whose schema has moved on, or on another database, Optuna's own
calls run instead.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
from collections import defaultdict
from collections.abc import Container, Iterable, Iterator
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects import postgresql, sqlite

SCHEMA = "v3.2.0.a"  # the alembic revision whose tables these calls know

_trials = models.TrialModel.__table__
_params = models.TrialParamModel.__table__
_values = models.TrialValueModel.__table__
_intermediate = models.TrialIntermediateValueModel.__table__
_user_attrs = models.TrialUserAttributeModel.__table__
_system_attrs = models.TrialSystemAttributeModel.__table__
_studies = models.StudyModel.__table__
_study_system_attrs = models.StudySystemAttributeModel.__table__
_heartbeats = models.TrialHeartbeatModel.__table__
_UPSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # others: Optuna's own
_BUILT_UPSERTS: dict[tuple[str, str], sqlalchemy.Insert] = {}  # by database and table

_logger = logging.getLogger(__name__)


class CoreStorage(optuna.storages.RDBStorage):
    """`optuna.storages.RDBStorage`, its per-trial calls made through SQLAlchemy Core."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Optuna's own check has made sure the database is at this Optuna's head version.
        self._core = self.get_head_version() == SCHEMA
        self._upsert = _UPSERTS.get(self.engine.name) if self._core else None

    def get_trial(self, trial_id: int) -> FrozenTrial:
        if not self._core:
            return super().get_trial(trial_id)
        with _transaction(self.engine) as connection:
            trials = _read(connection, _ONE_TRIAL, trial_id=trial_id)
        if not trials:
            raise KeyError(models.NOT_FOUND_MSG)
        return trials[0]

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        if not self._core:
            return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)
        # As Optuna's: the trials of the study (in those states), and of those only the ones
        # newer than ``trial_id_greater_than`` or named in ``included_trial_ids``.
        included = {i for i in included_trial_ids if i <= trial_id_greater_than}
        where = [_trials.c.study_id == study_id]
        if states is not None:
            assert isinstance(states, Iterable)
            where.append(_trials.c.state.in_(list(states)))
        if trial_id_greater_than > -1:
            newer = _trials.c.trial_id > trial_id_greater_than
            where.append(
                sqlalchemy.or_(_trials.c.trial_id.in_(included), newer) if included else newer
            )
        with _transaction(self.engine) as connection:
            if connection.execute(_STUDY, {"study_id": study_id}).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            statement = (
                sqlalchemy.select(*_TRIAL_COLUMNS).where(*where).order_by(_trials.c.trial_id)
            )
            return _read(connection, statement)

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
        previous_distribution: distributions.BaseDistribution | None,
    ) -> None:
        if not self._core:
            return super()._set_trial_param(
                trial_id, param_name, param_value_internal, distribution, previous_distribution
            )
        with _transaction(self.engine, writes=True) as connection:
            study_id = self._updatable(connection, trial_id)
            if previous_distribution is None:  # the study's first trial with it, or a new process
                previous = connection.execute(
                    _PREVIOUS_DISTRIBUTION, {"study_id": study_id, "param_name": param_name}
                ).first()
                if previous is not None:
                    previous_distribution = distributions.json_to_distribution(previous[0])
            if previous_distribution is not None:
                distributions.check_distribution_compatibility(previous_distribution, distribution)
            connection.execute(
                _INSERT_PARAM,
                {
                    "trial_id": trial_id,
                    "param_name": param_name,
                    "param_value": param_value_internal,
                    "distribution_json": distributions.distribution_to_json(distribution),
                },
            )
        return None

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        if self._upsert is None:
            return super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        value, value_type = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
            intermediate_value
        )
        with _transaction(self.engine, writes=True) as connection:
            self._updatable(connection, trial_id)
            connection.execute(
                self._upserting(_intermediate, ("trial_id", "step")),
                {
                    "trial_id": trial_id,
                    "step": step,
                    "intermediate_value": value,
                    "intermediate_value_type": value_type,
                },
            )
        return None

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if self._upsert is None:
            return super().set_trial_user_attr(trial_id, key, value)
        self._set_trial_attr(_user_attrs, trial_id, key, value)
        return None

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if self._upsert is None:
            return super().set_trial_system_attr(trial_id, key, value)
        self._set_trial_attr(_system_attrs, trial_id, key, value)
        return None

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        if self._upsert is None:
            return super().set_study_system_attr(study_id, key, value)
        with _transaction(self.engine, writes=True) as connection:
            if connection.execute(_STUDY, {"study_id": study_id}).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            connection.execute(
                self._upserting(_study_system_attrs, ("study_id", "key")),
                {"study_id": study_id, "key": key, "value_json": json.dumps(value)},
            )
        return None

    def record_heartbeat(self, trial_id: int) -> None:
        if self._upsert is None:
            return super().record_heartbeat(trial_id)
        # The database's clock, as Optuna's: the stale check compares it with the database's now.
        insert = self._upsert(_heartbeats).values(
            trial_id=trial_id, heartbeat=sqlalchemy.func.now()
        )
        with _transaction(self.engine, writes=True) as connection:
            connection.execute(
                insert.on_conflict_do_update(
                    index_elements=[_heartbeats.c.trial_id],
                    set_={"heartbeat": sqlalchemy.func.now()},
                )
            )
        return None

    def _set_trial_attr(self, table: sqlalchemy.Table, trial_id: int, key: str, value: Any) -> None:
        with _transaction(self.engine, writes=True) as connection:
            self._updatable(connection, trial_id)
            connection.execute(
                self._upserting(table, ("trial_id", "key")),
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)},
            )

    def _updatable(self, connection: sqlalchemy.Connection, trial_id: int) -> int:
        """The study of running trial ``trial_id``; raises as Optuna does if it has finished."""
        row = connection.execute(_TRIAL_STATE, {"trial_id": trial_id}).first()
        if row is None:
            raise KeyError(models.NOT_FOUND_MSG)
        self.check_trial_is_updatable(trial_id, row.state)
        return row.study_id

    def _upserting(self, table: sqlalchemy.Table, unique: tuple[str, ...]) -> sqlalchemy.Insert:
        """Insert a row of ``table``, or update the one with the same ``unique`` columns (the
        upsert Optuna makes for trial attrs); its values bound by column name."""
        key = (self.engine.name, table.name)
        statement = _BUILT_UPSERTS.get(key)
        if statement is None:  # built once: building it costs more than running it
            columns = [c.name for c in table.columns if not c.primary_key]
            insert = self._upsert(table).values({c: sqlalchemy.bindparam(c) for c in columns})
            statement = _BUILT_UPSERTS[key] = insert.on_conflict_do_update(
                index_elements=[table.c[c] for c in unique],
                set_={c: insert.excluded[c] for c in columns if c not in unique},
            )
        return statement


@contextlib.contextmanager
def _transaction(
    engine: sqlalchemy.Engine, *, writes: bool = False
) -> Iterator[sqlalchemy.Connection]:
    """A transaction on ``engine``, committed at the end, failing as Optuna's sessions fail.

    Optuna ignores an integrity error in its writes (another process wrote the same row first)
    and raises `StorageInternalError` for any other database error, which callers (Optuna's
    heartbeat, the retries in `search.target`) expect.
    """
    try:
        with engine.begin() as connection:
            yield connection
    except sqlalchemy.exc.IntegrityError as error:
        if not writes:
            raise
        _logger.debug(f"Ignoring {error!r}: another process wrote the same row first.")
    except sqlalchemy.exc.SQLAlchemyError as error:
        raise optuna.exceptions.StorageInternalError(_FAILED) from error


_FAILED = "An exception is raised during the commit."  # Optuna's message, its first sentence
_STUDY = sqlalchemy.select(_studies.c.study_id).where(
    _studies.c.study_id == sqlalchemy.bindparam("study_id")
)
_TRIAL_STATE = sqlalchemy.select(_trials.c.state, _trials.c.study_id).where(
    _trials.c.trial_id == sqlalchemy.bindparam("trial_id")
)
_PREVIOUS_DISTRIBUTION = (
    sqlalchemy.select(_params.c.distribution_json)
    .join(_trials, _params.c.trial_id == _trials.c.trial_id)
    .where(
        _trials.c.study_id == sqlalchemy.bindparam("study_id"),
        _params.c.param_name == sqlalchemy.bindparam("param_name"),
    )
    .limit(1)
)
_INSERT_PARAM = sqlalchemy.insert(_params)
_TRIAL_COLUMNS = (
    _trials.c.trial_id,
    _trials.c.number,
    _trials.c.state,
    _trials.c.datetime_start,
    _trials.c.datetime_complete,
)
_ONE_TRIAL = sqlalchemy.select(*_TRIAL_COLUMNS).where(
    _trials.c.trial_id == sqlalchemy.bindparam("trial_id")
)


def _of_trials(table: sqlalchemy.Table, *columns: str) -> sqlalchemy.Select:
    """A child table's rows of some trials, in the order Optuna's ORM reads them (by key)."""
    primary_key = next(iter(table.primary_key.columns))
    return (
        sqlalchemy.select(table.c.trial_id, *(table.c[name] for name in columns))
        .where(table.c.trial_id.in_(sqlalchemy.bindparam("ids", expanding=True)))
        .order_by(primary_key)
    )


# Built once, so that each read only binds ids: building a statement costs more than running it.
_CHILDREN = {
    "params": _of_trials(_params, "param_name", "param_value", "distribution_json"),
    "values": _of_trials(_values, "objective", "value", "value_type"),
    "intermediate": _of_trials(
        _intermediate, "step", "intermediate_value", "intermediate_value_type"
    ),
    "user_attrs": _of_trials(_user_attrs, "key", "value_json"),
    "system_attrs": _of_trials(_system_attrs, "key", "value_json"),
}
_IDS_PER_STATEMENT = 5000  # well below any database's limit on bound parameters


def _read(
    connection: sqlalchemy.Connection, statement: sqlalchemy.Select, **bound: Any
) -> list[FrozenTrial]:
    """The trials that ``statement`` selects, in one transaction: one more statement per table."""
    rows = connection.execute(statement, bound).all()
    if not rows:
        return []
    ids = [row[0] for row in rows]
    found: dict[str, dict[int, list[Any]]] = {name: defaultdict(list) for name in _CHILDREN}
    for first in range(0, len(ids), _IDS_PER_STATEMENT):
        chunk = ids[first : first + _IDS_PER_STATEMENT]
        for name, child in _CHILDREN.items():
            for row in connection.execute(child, {"ids": chunk}):
                found[name][row[0]].append(row[1:])
    params, values, intermediate = found["params"], found["values"], found["intermediate"]
    user_attrs, system_attrs = found["user_attrs"], found["system_attrs"]

    trials = []
    for trial_id, number, state, start, complete in rows:
        trial_values = None
        if values[trial_id]:
            trial_values = [0.0] * len(values[trial_id])
            for objective, value, value_type in values[trial_id]:
                trial_values[objective] = models.TrialValueModel.stored_repr_to_value(
                    value, value_type
                )
        trial_distributions = {
            name: distributions.json_to_distribution(distribution_json)
            for name, _, distribution_json in params[trial_id]
        }
        trials.append(
            FrozenTrial(
                number=number,
                state=state,
                value=None,
                values=trial_values,
                datetime_start=_local(start),
                datetime_complete=_local(complete),
                params={
                    name: trial_distributions[name].to_external_repr(value)
                    for name, value, _ in params[trial_id]
                },
                distributions=trial_distributions,
                user_attrs={key: json.loads(value) for key, value in user_attrs[trial_id]},
                system_attrs={key: json.loads(value) for key, value in system_attrs[trial_id]},
                intermediate_values={
                    step: models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                        value, value_type
                    )
                    for step, value, value_type in intermediate[trial_id]
                },
                trial_id=trial_id,
            )
        )
    return trials


def _local(utc: datetime.datetime | None) -> datetime.datetime | None:
    """Optuna keeps trial times as naive UTC and shows them as naive local time (`TrialModel`)."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)
