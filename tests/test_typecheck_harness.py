"""`.ci/typecheck` maps pyproject's package-dir to module names, so mypy resolves imports
between the folders and reports errors at the repository's paths.

Checked on a two-folder project in a temporary directory (the same layout as ours:
`src_a/` installed as `pkg`, `src_b/` as `pkg.sub`), which is fast and cannot be
disturbed by the state of the real code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parent.parent

PYPROJECT = """
[tool.setuptools]
package-dir = { "pkg" = "src_a", "pkg.sub" = "src_b" }
packages = ["pkg", "pkg.sub"]

[tool.mypy]
strict = true
"""


def project(tmp_path: Path, b_module: str) -> Path:
    """A copy of .ci/typecheck in a project whose src_a/use.py imports pkg.sub.values."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "typecheck", tmp_path / ".ci" / "typecheck")
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    for folder in ("src_a", "src_b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "src_a" / "use.py").write_text(
        "from pkg.sub.values import answer\n\n\ndef doubled() -> int:\n    return answer() * 2\n"
    )
    (tmp_path / "src_b" / "values.py").write_text(b_module)
    return tmp_path


def typecheck(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / ".ci" / "typecheck"), f"--cache-dir={root / '.mypy_cache'}", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_imports_between_mapped_folders_resolve(tmp_path: Path) -> None:
    done = typecheck(project(tmp_path, "def answer() -> int:\n    return 21\n"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


def test_a_type_error_fails_with_the_repository_path(tmp_path: Path) -> None:
    root = project(tmp_path, 'def answer() -> str:\n    return "21"\n')
    done = typecheck(root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "src_a/use.py:5: error:" in done.stdout and "import-not-found" not in done.stdout
    only_b = typecheck(root, "src_b")  # the error is in src_a: src_b alone is clean
    assert only_b.returncode == 0, only_b.stdout + only_b.stderr


def test_a_subpackage_without_its_own_package_dir_entry_is_checked(tmp_path: Path) -> None:
    """`pkg.sub.deep` is listed in packages but not in package-dir (setuptools finds it at
    src_b/deep), as daemon/storage is: its modules are checked and imports of it resolve."""
    root = project(tmp_path, "from pkg.sub.deep.inner import answer as answer\n")
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pkg.sub"]', '"pkg.sub", "pkg.sub.deep"]'))
    (root / "src_b" / "deep").mkdir()
    (root / "src_b" / "deep" / "__init__.py").write_text("")
    inner = root / "src_b" / "deep" / "inner.py"
    inner.write_text("def answer() -> int:\n    return 21\n")
    done = typecheck(root)
    assert done.returncode == 0, done.stdout + done.stderr
    inner.write_text('def answer() -> int:\n    return "21"\n')
    broken = typecheck(root)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "src_b/deep/inner.py:2: error:" in broken.stdout and "import-not-found" not in broken.stdout


def test_the_link_tree_plain_mypy_reads_mirrors_the_package() -> None:
    """`mypy` (pyproject's [tool.mypy]) reads the package through .typecheck/tracklog: one
    link per module of client/, and protocol/ and daemon/ whole. A module added to client/
    without its link would go unchecked by plain mypy, so this fails until it is linked."""
    root = Path(__file__).resolve().parent.parent
    tree = root / ".typecheck" / "tracklog"
    client = {p.name for p in (root / "client").iterdir() if p.suffix == ".py" or p.name == "py.typed"}
    linked = {p.name for p in tree.iterdir() if p.name not in ("protocol", "daemon")}
    assert linked == client, (
        f"link them: cd .typecheck/tracklog && ln -s ../../client/NAME NAME ({client ^ linked})"
    )
    for name in client:
        assert (tree / name).resolve() == (root / "client" / name).resolve()
    assert (tree / "protocol").resolve() == (root / "protocol").resolve()
    assert (tree / "daemon").resolve() == (root / "daemon").resolve()
