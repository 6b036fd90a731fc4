"""Engines and sessions: what the pool hands out."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest
from sqlalchemy import create_engine, event, text

from storage.db import POOL_KEPT, Database


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_connection_the_server_closed_is_never_handed_out(database_url):
    """No ping per checkout (a round trip each): a pooled connection PostgreSQL has terminated is dropped at checkout
    and the next request works on a fresh one."""
    db = Database(database_url)
    killer = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with db.session() as session:
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with killer.connect() as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
            for _ in range(100):  # gone from the server's view, so its last words are on the socket
                gone = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = :pid"
                if connection.execute(text(gone), {"pid": pid}).scalar_one():
                    break
                time.sleep(0.02)
        with db.session() as session:
            assert session.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        with db.read_session() as session:
            assert session.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        killer.dispose()
        db.dispose()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_burst_of_requests_keeps_its_connections_for_the_next(database_url):
    """POOL_KEPT requests at once, then as many again: the second burst opens no connection (one opened per request
    costs a connection setup and the prepared statements)."""
    db = Database(database_url)
    opened: list[object] = []
    event.listen(db.engine, "connect", lambda connection, _record: opened.append(connection))
    together = Barrier(POOL_KEPT)

    def request(_: int) -> int:
        with db.session() as session:
            together.wait(timeout=30)  # all of them hold a connection at once
            return session.execute(text("SELECT pg_backend_pid()")).scalar_one()

    try:
        with ThreadPoolExecutor(POOL_KEPT) as threads:
            first = set(threads.map(request, range(POOL_KEPT)))
            assert len(opened) == len(first) == POOL_KEPT
            assert set(threads.map(request, range(POOL_KEPT))) == first
        assert len(opened) == POOL_KEPT
    finally:
        db.dispose()
