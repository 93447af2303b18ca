"""The PostgreSQL fixture finds the server binaries or fails saying what to install (it
never skips), and gives each test a database of its own."""

from __future__ import annotations

import psycopg
import pytest

from tests import pg


def test_without_postgresql_installed_the_fixture_fails_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pg.shutil, "which", lambda name: None)
    monkeypatch.setattr(pg.glob, "glob", lambda pattern: [])
    with pytest.raises(pg.PostgresMissing, match=r"apt-get install -y postgresql"):
        pg.find_bin_dir()


def test_each_test_gets_an_empty_database_of_its_own(pg_server: pg.PgServer, pg_url: str) -> None:
    other = pg_server.create_database()
    try:
        assert other != pg_url
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE mine (a int)")
            (tables,) = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchall()
            assert tables == (1,)
        with psycopg.connect(other, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('mine')").fetchone() == (None,)
    finally:
        pg_server.drop_database(other)
