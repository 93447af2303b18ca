"""The package edges: the protocol stands alone, the client never imports the daemon,
and the version is written once.

Each import check runs in a fresh interpreter, since this test process has long since
imported everything."""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import tracklog
from tests.conftest import DaemonProcess, open_client
from tracklog import cli
from tracklog.daemon import cli as daemon_cli
from tracklog.protocol.version import __version__

ROOT = Path(__file__).resolve().parent.parent

#: The source folders and the package each is installed as (pyproject.toml's package-dir).
PACKAGES = {"client": "tracklog", "protocol": "tracklog.protocol", "daemon": "tracklog.daemon"}

#: The client's own modules, by name, for the checks that the protocol loads none of them.
CLIENT_MODULES = {f"tracklog.{path.stem}" for path in (ROOT / "client").glob("*.py")} - {"tracklog.__init__"}


def loaded_after(statement: str, tmp_path: Path) -> list[str]:
    """The `tracklog` and `websockets` modules a fresh interpreter holds after statement."""
    probe = (
        f"{statement}\n"
        "import json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('tracklog', 'websockets')))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True
    )
    return list(json.loads(done.stdout))


def test_importing_the_protocol_loads_no_client_module_and_no_websockets(tmp_path: Path) -> None:
    loaded = loaded_after("import tracklog.protocol", tmp_path)
    assert "tracklog.protocol.messages" in loaded  # the probe saw the import
    assert [m for m in loaded if m.startswith("websockets")] == []
    assert [m for m in loaded if m in CLIENT_MODULES] == []


def test_using_the_client_loads_no_daemon_module(tmp_path: Path) -> None:
    loaded = loaded_after("import tracklog; tracklog.connect; from tracklog import *", tmp_path)
    assert "tracklog.tracker" in loaded and "tracklog.aio" in loaded
    assert [m for m in loaded if m.startswith("tracklog.daemon")] == []


def test_the_command_line_loads_only_the_daemons_command_table(tmp_path: Path) -> None:
    """Building the parser (every `tracklog` run does) loads the daemon's small
    `tracklog.daemon.cli` through its entry point, and nothing else of the daemon."""
    loaded = loaded_after("from tracklog.cli import build_parser; build_parser()", tmp_path)
    assert [m for m in loaded if m.startswith("tracklog.daemon")] == [
        "tracklog.daemon",
        "tracklog.daemon.cli",
    ]


def _imported_modules(path: Path, package: str) -> set[str]:
    """Every module path names in an import, relative imports resolved against package,
    with `from X import name` also counted as `X.name` (name may be a module)."""
    is_init = path.name == "__init__.py"
    own = package if is_init else f"{package}.{path.stem}"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = own.split(".")
                base = ".".join(parts[: len(parts) - node.level + (1 if is_init else 0)])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in {"import_module", "__import__"})
            )
        ):
            found.add(node.args[0].value)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_import_resolver_sees_relative_imports_of_the_daemon(tmp_path: Path) -> None:
    """The AST check below would pass vacuously if it misread relative imports."""
    source = tmp_path / "shady.py"
    source.write_text("from . import daemon\nfrom .daemon.server import x\nfrom ..daemon import y\n")
    assert {"tracklog.daemon", "tracklog.daemon.server"} <= _imported_modules(source, "tracklog")
    assert "tracklog.daemon" in _imported_modules(source, "tracklog.protocol")


def test_no_client_or_protocol_module_imports_the_daemon() -> None:
    offenders = []
    for folder in ("client", "protocol"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for module in _imported_modules(path, PACKAGES[folder]):
                if _within(module, "tracklog.daemon"):
                    offenders.append(f"{folder}/{path.name}: {module}")
    assert offenders == []


def test_no_protocol_module_imports_the_client_or_websockets() -> None:
    offenders = []
    for path in sorted((ROOT / "protocol").glob("*.py")):
        for module in _imported_modules(path, "tracklog.protocol"):
            client_module = _within(module, "tracklog") and not _within(module, "tracklog.protocol")
            if module == "tracklog" or client_module or _within(module, "websockets"):
                offenders.append(f"protocol/{path.name}: {module}")
    assert offenders == []


def test_the_version_is_written_once_and_read_everywhere() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    version_attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert version_attr == "tracklog.protocol.version.__version__"
    assignments = [
        f"{folder}/{path.name}"
        for folder in PACKAGES
        for path in sorted((ROOT / folder).glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assign | ast.AnnAssign)
        and any(
            isinstance(target, ast.Name) and target.id == "__version__"
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
    ]
    assert assignments == ["protocol/version.py"]
    assert tracklog.__version__ == __version__ == importlib.metadata.version("tracklog")


async def test_the_daemon_names_the_same_version(daemon: DaemonProcess) -> None:
    _, welcome = await open_client(daemon.url)
    assert welcome["server"] == f"tracklog/{__version__}"


def test_the_lazy_client_exports_exactly_its_public_names() -> None:
    """`tracklog/__init__.py` loads names on first use from `_SOURCES`; that table, the
    `TYPE_CHECKING` imports and `__all__` must name the same things."""
    sources: dict[str, str] = tracklog._SOURCES  # type: ignore[attr-defined]
    assert sorted(sources) == sorted(tracklog.__all__)
    init = ast.parse((ROOT / "client" / "__init__.py").read_text())
    checked_imports = {
        alias.asname or alias.name
        for node in ast.walk(init)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in node.body
        if isinstance(inner, ast.ImportFrom)
        for alias in inner.names
    }
    assert checked_imports == set(tracklog.__all__)
    for name in tracklog.__all__:
        assert getattr(tracklog, name) is getattr(sys.modules[sources[name]], name), name
    assert set(tracklog.__all__) <= set(dir(tracklog))
    with pytest.raises(AttributeError, match="no attribute 'conect'"):
        tracklog.conect  # type: ignore[attr-defined]  # noqa: B018


def test_the_daemon_commands_come_from_the_entry_point() -> None:
    entry_points = importlib.metadata.entry_points(group=cli.COMMANDS_GROUP)
    assert [ep.value for ep in entry_points] == ["tracklog.daemon.cli:add_commands"]
    help_text = cli.build_parser().format_help()
    for command in ("serve", "rebuild", "verify", "replay", "tail", "runs"):
        assert f"    {command} " in help_text, command
    assert "pip install" not in help_text


def test_without_the_daemon_the_help_and_the_error_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.importlib.metadata, "entry_points", lambda group: [])
    parser = cli.build_parser()
    assert cli.DAEMON_HINT in " ".join(parser.format_help().split())
    assert parser.parse_args(["runs"]).command == "runs"  # the client's commands are all there
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'serve'" in error and cli.DAEMON_HINT in error


def test_without_the_daemons_dependencies_the_commands_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(daemon_cli, "missing_dependencies", lambda: ["structlog"])
    serve_help = cli.build_parser().format_help()
    assert "run the daemon [not installed: pip install 'tracklog[daemon]']" in " ".join(serve_help.split())
    # Importing the daemon's commands now fails, even if an earlier test imported them.
    monkeypatch.setitem(sys.modules, "tracklog.daemon.commands", None)
    monkeypatch.delattr(sys.modules["tracklog.daemon"], "commands", raising=False)
    assert cli.main(["rebuild", "--db", str(tmp_path / "x.db")]) == 2
    assert "the daemon is not installed" in capsys.readouterr().err


def test_the_daemons_extra_is_installed_here() -> None:
    assert daemon_cli.missing_dependencies() == []


def test_the_daemon_commands_keep_their_arguments() -> None:
    args = cli.build_parser().parse_args(["serve", "--port", "0", "--token", "a", "--lost-after", "5"])
    assert (args.port, args.token, args.lost_after, args.db) == (0, ["a"], 5.0, None)
    assert callable(args.handler)
    # The offline commands name databases by URL (a path or sqlite:///PATH), kept as given.
    replay = cli.build_parser().parse_args(["replay", "--to", "3", "--out", "sqlite:///o.db"])
    assert isinstance(replay, argparse.Namespace) and (replay.to, replay.out) == (3, "sqlite:///o.db")


def test_no_module_outside_the_storage_package_uses_sqlite() -> None:
    """SQL lives only in daemon/storage/: nothing else imports sqlite3, so a second backend
    (PostgreSQL) means a package of its own, not edits all over the daemon."""
    root = ROOT
    storage = root / "daemon" / "storage"
    offenders = []
    for folder in ("client", "protocol", "daemon"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.is_relative_to(storage):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(name == "sqlite3" or name.startswith("sqlite3.") for name in names):
                    offenders.append(str(path.relative_to(root)))
    assert offenders == []
