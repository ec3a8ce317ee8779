"""The exact claim at a study's target: a trial runs only if it wins one of the target's places.

Any number of processes, on any number of machines, run trials on one study until it has its
target of finished trials. A process that has started a trial claims a place for it in one
database transaction that holds the study's lock: it counts the finished trials and the running
trials that hold a claim, and records a claim for its trial only if that count is short of the
target. SQLite takes the lock with ``BEGIN IMMEDIATE`` (one writer at a time, and the count reads
the latest commit); PostgreSQL with a transaction-scoped advisory lock on the study (claims commit
before the lock is released, so the next holder's count sees them); other servers with a row lock
on the study. Two trials started in the same instant therefore take the last place in turn, and
the second finds none left: however many processes race, the study never runs past its target.

A claim is a trial system attr named after its trial (``search:claim:<trial id>``), so it is
deleted with its trial's study, and the copy that Optuna's retry makes of a failed trial's system
attrs names the failed trial, not the retry: a retried trial claims a place of its own. A claimed trial that fails without counting (interrupted, crashed)
gives its place back by leaving the RUNNING state.

Under successive halving that promotes (`search.promotion`), a configuration's place stays with
its first trial, finished when it pauses: its continuations neither claim nor count, and the
count of them still to run (``continuing``) keeps the workers at work.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import optuna
import sqlalchemy
import sqlalchemy.exc

from search import study as studies
from search.rungs import CONTINUES

CLAIM_KEY = "search:claim:"  # + the trial's id: a copy of it in a retry names another trial
_ADVISORY_NAMESPACE = 0x5EA4C  # the first key of PostgreSQL's two-key advisory locks: ours

# Optuna's tables, as much of them as the count reads.
_trials = sqlalchemy.table(
    "trials",
    sqlalchemy.column("trial_id"),
    sqlalchemy.column("study_id"),
    sqlalchemy.column("state"),
)
_user_attrs = sqlalchemy.table(
    "trial_user_attributes",
    sqlalchemy.column("trial_id"),
    sqlalchemy.column("key"),
    sqlalchemy.column("value_json"),
)
_system_attrs = sqlalchemy.table(
    "trial_system_attributes",
    sqlalchemy.column("trial_id"),
    sqlalchemy.column("key"),
    sqlalchemy.column("value_json"),
)


def _counts_query() -> sqlalchemy.Select:
    """The counts of the study bound as ``study_id``."""
    t = _trials.c
    counted_failure = sqlalchemy.exists().where(
        _user_attrs.c.trial_id == t.trial_id,
        _user_attrs.c.key == "fail_reason",
        _user_attrs.c.value_json.in_([json.dumps(r) for r in studies.COUNTED_FAIL_REASONS]),
    )
    # Its own claim, not one copied from the trial it retries (Optuna's retry copies system attrs).
    own_claim = sqlalchemy.exists().where(
        _system_attrs.c.trial_id == t.trial_id,
        _system_attrs.c.key
        == sqlalchemy.literal(CLAIM_KEY) + sqlalchemy.cast(t.trial_id, sqlalchemy.String),
    )
    # A continuation of a paused trial (`search.promotion`): its configuration's place is the
    # paused trial's, which keeps counting as finished.
    continuation = sqlalchemy.exists().where(
        _system_attrs.c.trial_id == t.trial_id, _system_attrs.c.key == CONTINUES
    )
    new = sqlalchemy.not_(continuation)
    state = sqlalchemy.cast(t.state, sqlalchemy.String)  # PostgreSQL keeps it as an enum type
    running = state == "RUNNING"
    finished = sqlalchemy.and_(
        new,
        sqlalchemy.or_(
            state.in_(["COMPLETE", "PRUNED"]), sqlalchemy.and_(state == "FAIL", counted_failure)
        ),
    )
    continuing = sqlalchemy.and_(continuation, state.in_(["RUNNING", "WAITING"]))
    waiting = sqlalchemy.and_(continuation, state == "WAITING")

    def total(condition: sqlalchemy.ColumnElement[bool]) -> sqlalchemy.ColumnElement[int]:
        return sqlalchemy.func.coalesce(
            sqlalchemy.func.sum(sqlalchemy.case((condition, 1), else_=0)), 0
        )

    return sqlalchemy.select(
        total(finished),
        total(sqlalchemy.and_(running, own_claim, new)),
        total(sqlalchemy.and_(running, new)),
        total(continuing),
        total(waiting),
    ).where(t.study_id == sqlalchemy.bindparam("study_id"))


_COUNTS = _counts_query()  # built once: building it costs more than running it
_CLAIM = sqlalchemy.insert(_system_attrs)


@dataclass(frozen=True)
class Counts:
    """A study's trials as its target counts them: ``finished`` (as `search.study.count_finished`
    counts them), ``claimed`` (running with a place), ``running`` (some about to claim one) and
    ``continuing`` (continuations of paused trials, waiting or running: work left of
    configurations already counted), ``waiting`` of them."""

    finished: int
    claimed: int
    running: int
    continuing: int
    waiting: int


def counts(study: optuna.Study) -> Counts:
    """The study's `Counts`, in one query."""
    with _engine(study).connect() as connection:
        return _counts(connection, study._study_id)


def claim(study: optuna.Study, trial_id: int, target: int) -> bool:
    """Claim one of the study's ``target`` places for running trial ``trial_id``; False if all
    are taken (by finished trials or running ones that hold a claim)."""
    engine = _engine(study)
    with engine.connect() as connection:
        _lock(connection, study._study_id)
        now = _counts(connection, study._study_id)
        admitted = now.finished + now.claimed < target
        if admitted:
            connection.execute(
                _CLAIM,
                {
                    "trial_id": trial_id,
                    "key": f"{CLAIM_KEY}{trial_id}",
                    "value_json": json.dumps(True),
                },
            )
        connection.commit()
    return admitted


def is_continuation(trial: optuna.Trial) -> bool:
    """Whether ``trial`` continues a paused one: it takes no place of its own. Read from the
    trial as Optuna read it when the trial started (as Optuna reads its fixed params), so that
    every study's trials pay no extra read: a continuation is made with its system attrs."""
    return CONTINUES in trial._cached_frozen_trial.system_attrs


@contextlib.contextmanager
def decision_lock(study: optuna.Study) -> Iterator[None]:
    """Hold the study's lock for rung decisions while Optuna's own connections write: for
    SQLite, the database folder's file lock (the one that guards creating its schema); for a
    server, a session-level lock on a connection of its own."""
    storage = studies.rdb_storage(study)
    path = studies.sqlite_path(str(storage.engine.url)) if storage is not None else None
    if path is not None:
        with studies.folder_lock(path):
            yield
        return
    engine = _engine(study)
    with engine.connect() as connection:
        dialect = connection.dialect.name
        key = {"namespace": _ADVISORY_NAMESPACE + 1, "study_id": study._study_id}
        if dialect == "postgresql":
            connection.execute(
                sqlalchemy.text("SELECT pg_advisory_lock(:namespace, :study_id)"), key
            )
            unlock = "SELECT pg_advisory_unlock(:namespace, :study_id)"
        else:
            lock_name = {"name": f"search-rungs-{study._study_id}"}
            connection.execute(sqlalchemy.text("SELECT GET_LOCK(:name, 600)"), lock_name)
            key, unlock = lock_name, "SELECT RELEASE_LOCK(:name)"
        connection.commit()
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(unlock), key)
            connection.commit()


def _lock(connection: sqlalchemy.Connection, study_id: int) -> None:
    dialect = connection.dialect.name
    if dialect == "sqlite":
        # The database's one write lock, taken before the count is read (a deferred transaction
        # would read first and could find the count stale when it comes to write).
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.execute(
            sqlalchemy.text("SELECT pg_advisory_xact_lock(:namespace, :study_id)"),
            {"namespace": _ADVISORY_NAMESPACE, "study_id": study_id},
        )
    else:
        connection.execute(
            sqlalchemy.text("SELECT study_id FROM studies WHERE study_id = :study_id FOR UPDATE"),
            {"study_id": study_id},
        )


def _counts(connection: sqlalchemy.Connection, study_id: int) -> Counts:
    return Counts(*(int(n) for n in connection.execute(_COUNTS, {"study_id": study_id}).one()))


def _engine(study: optuna.Study) -> sqlalchemy.Engine:
    storage = studies.rdb_storage(study)
    if storage is None:
        raise TypeError(f"study {study.study_name}: claims need an RDB storage")
    return storage.engine
