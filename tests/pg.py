"""Throwaway PostgreSQL databases on the local server for the tests.

``pg_database()`` creates ``tcusim_test_<random>`` on ``TCUSIM_TEST_PG`` (default
``postgresql://postgres@127.0.0.1:5432``), yields its URL and drops it afterwards; without a
server the calling test is skipped, saying so.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

SERVER = os.environ.get("TCUSIM_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def admin(dbname: str = "postgres") -> psycopg.Connection[Any]:
    """An autocommit connection to ``dbname`` on the test server."""
    return psycopg.connect(f"{SERVER}/{dbname}", autocommit=True, connect_timeout=3)


@contextmanager
def pg_database() -> Iterator[str]:
    """A new, empty database's URL, dropped on exit."""
    try:
        conn = admin()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server answers at {SERVER}: {exc}")
    name = f"tcusim_test_{secrets.token_hex(6)}"
    with conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"{SERVER}/{name}"
        finally:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
