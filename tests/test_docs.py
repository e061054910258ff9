"""docs/plugins.md runs: every Python block is a plugin, a test, or an excerpt.

`# file: NAME.py` blocks become plugins named NAME (installed as a distribution with the
entry point, so they load exactly as a pip-installed plugin); `# file: tests/...` blocks
become test files, run by pytest in a subprocess with the kit; blocks of one file join in
order. `# excerpt: PATH` blocks must appear in PATH verbatim, in pieces split by `...`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

DOC = ROOT / "docs" / "plugins.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[str, str, str]]:
    """(kind, path, code) of every Python block: kind is "file" or "excerpt"."""
    blocks = []
    for match in BLOCK.finditer(DOC.read_text()):
        first, _, code = match.group(1).partition("\n")
        tag = re.fullmatch(r"# (file|excerpt): (\S+)", first)
        assert tag, f"a Python block in {DOC.name} starts with neither `# file:` nor " \
                    f"`# excerpt:`: {first!r}"
        blocks.append((tag.group(1), tag.group(2), code))
    return blocks


def test_every_excerpt_is_in_the_file_it_quotes() -> None:
    excerpts = [(path, code) for kind, path, code in python_blocks() if kind == "excerpt"]
    assert excerpts
    for path, code in excerpts:
        source = (ROOT / path).read_text()
        for piece in code.split("...\n"):
            assert piece in source, f"{DOC.name} quotes {path} wrongly:\n{piece}"


def test_every_plugin_and_test_on_the_page_runs(tmp_path: Path) -> None:
    files: dict[str, str] = {}
    for kind, path, code in python_blocks():
        if kind == "file":
            files[path] = files.get(path, "") + code
    site = tmp_path / "site"
    project = tmp_path / "project"
    plugins = [path for path in files if not path.startswith("tests/")]
    assert plugins and all(path.endswith(".py") and "/" not in path for path in plugins)
    for path, code in files.items():
        target = (site if path in plugins else project) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
    for path in plugins:
        install_as_plugin(site, path.removesuffix(".py"))
    (project / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAXI_", "PYTEST_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    tests = sum(code.count("\nasync def test_") + code.count("\ndef test_")
                for path, code in files.items() if path.startswith("tests/"))
    assert f"{tests} passed" in result.stdout, result.stdout


def install_as_plugin(site: Path, module: str) -> None:
    """The dist-info pip would write: importlib.metadata then finds the entry point."""
    info = site / f"docs_{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: docs-{module}\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(f"[taxi_tornado.plugins]\n{module} = {module}\n")
