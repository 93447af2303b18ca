"""The `--db` value chooses the backend: a path or sqlite:///PATH, memory:, postgresql://
(or postgres://), and a clear refusal for other schemes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg import PgServer
from tracklog.daemon.storage import MemoryBackend, PgBackend, SqliteBackend, open_backend
from tracklog.daemon.storage.readmodel import open_read_model
from tracklog.protocol import errors


def test_a_plain_path_is_an_sqlite_database(tmp_path: Path) -> None:
    backend = open_backend(tmp_path / "a.db")
    assert isinstance(backend, SqliteBackend) and backend.path == tmp_path / "a.db"


def test_an_sqlite_url_with_three_slashes_names_an_absolute_path(tmp_path: Path) -> None:
    backend = open_backend(f"sqlite://{tmp_path}/b.db")
    assert isinstance(backend, SqliteBackend) and backend.path == tmp_path / "b.db"


def test_memory_url_is_the_in_memory_backend() -> None:
    assert isinstance(open_backend("memory:"), MemoryBackend)


@pytest.mark.parametrize("url", ["postgresql://localhost/tracklog", "postgres://h/db"])
def test_postgresql_urls_are_the_postgresql_backend(url: str) -> None:
    assert isinstance(open_backend(url), PgBackend)


def test_a_postgresql_url_shows_no_password_and_takes_tracklog_settings() -> None:
    backend = open_backend("postgresql://u:secret@h/db?sslmode=disable&statement_timeout=5s&pool_size=2")
    assert isinstance(backend, PgBackend) and "secret" not in str(backend)
    assert backend.settings.conninfo == "postgresql://u:secret@h/db?sslmode=disable"
    assert (backend.settings.statement_timeout, backend.settings.pool_size) == ("5s", 2)
    with pytest.raises(errors.StorageError, match="pool_size"):
        open_backend("postgresql://h/db?pool_size=none")


def test_a_postgresql_url_opens_the_postgresql_read_model(pg_url: str) -> None:
    from tracklog.daemon.storage.postgres.readmodel import PgReadModel

    model = open_read_model(pg_url)
    try:
        assert isinstance(model, PgReadModel)
    finally:
        model.close()
    with pytest.raises(errors.StorageError, match=r"cannot connect to postgresql://127\.0\.0\.1:1/tracklog"):
        open_read_model("postgresql://127.0.0.1:1/tracklog")


def test_a_postgresql_log_opened_through_the_factory_exists_once_made(pg_url: str) -> None:
    backend = open_backend(pg_url)
    assert not backend.exists()
    log = backend.open_log()
    try:
        log.catch_up()
        assert log.head == 0 and backend.exists()
    finally:
        log.close()


def test_an_unknown_scheme_is_refused_by_name() -> None:
    with pytest.raises(errors.StorageError, match="unknown database scheme 'mysql'"):
        open_backend("mysql://h/db")


def test_an_sqlite_log_opened_through_the_factory_appends_and_reads(tmp_path: Path) -> None:
    log = open_backend(f"sqlite://{tmp_path}/c.db").open_log()
    try:
        log.catch_up()
        assert log.head == 0
    finally:
        log.close()


def test_offline_commands_take_an_sqlite_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tracklog.daemon import commands
    from tracklog.protocol import events as ev

    log = open_backend(tmp_path / "d.db").open_log()
    log.catch_up()
    log.append_events([ev.Metrics(run="r", data=ev.MetricsData(values={"a": 1.0}))] * 3)
    log.close()
    url = f"sqlite://{tmp_path}/d.db"
    assert commands.verify(url) == 0
    assert commands.rebuild(url) == 0
    assert commands.replay(url, 2, f"sqlite://{tmp_path}/r.db") == 0
    assert "state as of seq 2" in capsys.readouterr().out
    assert commands.verify("postgresql://nowhere.invalid/db") == 2
    assert "cannot connect to postgresql://nowhere.invalid/db" in capsys.readouterr().err


def test_offline_commands_take_a_postgresql_url(
    pg_server: PgServer, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tracklog.daemon import commands
    from tracklog.protocol import events as ev

    log = open_backend(pg_url).open_log()
    log.catch_up()
    log.append_events([ev.Metrics(run="r", data=ev.MetricsData(values={"a": float(i)})) for i in range(3)])
    log.close()
    assert commands.verify(pg_url) == 0
    assert "the live tables equal a rebuild from the log (3 events)" in capsys.readouterr().out
    assert commands.rebuild(pg_url) == 0
    target = pg_server.create_database()
    try:
        assert commands.replay(pg_url, 2, target) == 0
        assert "state as of seq 2" in capsys.readouterr().out
        assert commands.verify(target) == 0
        assert commands.replay(pg_url, 2, target) == 2  # not over a log that is there
        assert commands.replay(pg_url, 3, f"sqlite://{tmp_path}/copy.db") == 0
        assert commands.verify(tmp_path / "copy.db") == 0
    finally:
        pg_server.drop_database(target)
