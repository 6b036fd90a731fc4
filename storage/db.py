"""Engines and sessions for SQLite (embedded default) and PostgreSQL (at scale)."""

from __future__ import annotations

import fcntl
import logging
import os
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from storage.driver_sql import DriverStatement

logger = logging.getLogger(__name__)
SQLITE_BUSY_TIMEOUT_MS = 30_000
AFTER_COMMIT = "labelwheel_after_commit"
READ_ONLY = "labelwheel_read_only"
POOL_KEPT = 20  # PostgreSQL connections each process keeps open


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, a busy timeout, and ``BEGIN IMMEDIATE`` transactions.

    Python's sqlite3 module opens transactions lazily and as DEFERRED; in WAL mode a deferred
    transaction that read first and then writes fails at once with "database is locked" when
    another writer committed in between (the busy timeout does not apply). Taking the write lock
    at BEGIN makes writers queue on the busy timeout instead, so concurrent requests never fail.
    Sessions that only read (``Database.read_session``) begin DEFERRED and never wait for writers.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=FULL")  # every commit is on disk before it is acknowledged
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        (_BEGIN if read_only else _BEGIN_IMMEDIATE).rows(connection, {})


_BEGIN = DriverStatement(text("BEGIN"))  # every transaction runs one: on the cursor (storage.driver_sql)
_BEGIN_IMMEDIATE = DriverStatement(text("BEGIN IMMEDIATE"))


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # LIFO: the connection that wrote last is handed out next. SQLite drops a connection's page cache whenever
        # another connection has written since its last transaction; writers here take turns (``WriterLock``), so
        # handing them the last writer's connection keeps its cache warm instead of rotating through the pool.
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_use_lifo=True,
        )
        _configure_sqlite(engine)
        return engine
    # At most 30 connections per process; POOL_KEPT of them stay open between bursts. A connection opened per request
    # costs the API process a connection setup and psycopg's prepared statements (PostgreSQL parses and plans each
    # statement again): with 16 annotators labeling at once, keeping 10 cost about a quarter more CPU per label
    # (bench/labeling_scale.py).
    engine = create_engine(url, pool_size=POOL_KEPT, max_overflow=30 - POOL_KEPT)
    event.listen(engine, "checkout", _drop_if_closed_by_server)
    return engine


def _drop_if_closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Hand out no pooled connection that PostgreSQL has closed (a restart, ``pg_terminate_backend``, an idle
    timeout), without ``pool_pre_ping``'s round trip on every checkout: the server says so on the socket before it
    closes it, and an idle connection's socket has nothing else to read. The pool then takes another connection."""
    if dbapi_connection.closed:
        raise DisconnectionError("the connection is closed")
    poller = select.poll()  # not select.select(): it fails on descriptors past 1024
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    if poller.poll(0):
        raise DisconnectionError("the server closed the connection (or sent what an idle connection never gets)")


class WriterLock:
    """One SQLite writer at a time across threads and processes, woken at once when the lock frees.

    SQLite's own busy handler polls with sleeps of up to 100 ms, so under load some writers keep
    losing and latency tails grow to seconds; queueing on a kernel lock (a thread lock, then
    ``flock`` on a file beside the database for other processes) serves writers in turn instead.
    """

    def __init__(self, database_path: str) -> None:
        self._threads = threading.Lock()
        self._path = f"{database_path}.writer-lock"
        self._fd: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self._threads.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise TimeoutError("the database stayed busy for 30 s; retry, or look for a stuck writer")
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


class Database:
    """One engine and its session factory; ``session()`` commits on success, rolls back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        database = make_url(url).database
        sqlite_file = self.engine.dialect.name == "sqlite" and database not in (None, "", ":memory:")
        self._writer_lock = WriterLock(str(database)) if sqlite_file else None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        callbacks: list[Callable[[], None]] = []
        with self._writer_lock.held() if self._writer_lock else nullcontext(), self._sessions() as session:
            session.info[AFTER_COMMIT] = callbacks
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
        for callback in callbacks:  # after the write lock is released
            try:
                callback()
            except Exception:
                logger.exception("an after-commit action failed; the committed data is unaffected")

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads only: on SQLite it does not take the write lock.

        Objects read stay usable after it ends (detached with their loaded values).
        """
        with self._read_sessions() as session:
            try:
                yield session
            finally:
                session.expunge_all()
                session.rollback()

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run ``action`` once the session's transaction has committed: how jobs get enqueued only for stored rows.

    If the transaction rolls back, the action never runs.
    """
    if AFTER_COMMIT not in session.info:
        raise RuntimeError("after_commit needs a session from Database.session()")
    session.info[AFTER_COMMIT].append(action)


def insert_new(session: Session, table: type[Any], rows: list[dict[str, Any]]) -> None:
    """Insert rows in one statement, leaving any that another job stored meanwhile (same key) as they are."""
    if rows:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        session.execute(dialect.insert(table).on_conflict_do_nothing(), rows)
