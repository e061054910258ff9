"""A newcomer's first hour: the README's commands run as written, the outputs the docs
show are the real ones, and no link in them leads outside the repository.

The README's install line (a venv, `pip install .`) is not run here: it needs the
package index and minutes; everything after it is, against a real server.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from taxi_tornado.plugins.loader import load_plugins
from tests.conftest import PASSWORD, ROOT, spawn_server

README = ROOT / "README.md"
OPERATIONS = ROOT / "docs" / "operations.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)|href=\"([^\"]+)\"")
# Linked before it is written: checked like every other target once it exists.
PENDING = {ROOT / "docs" / "protocol.md"}


def user_docs() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section, up to the next `## `."""
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def fences(text: str, language: str | None = None) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if language is None or lang == language]


def extra_plugins() -> list[str]:
    """Plugins this environment loads that a plain `pip install .` does not have."""
    return [plugin.name for plugin in load_plugins()[1] if plugin.distribution != "taxi-tornado"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_")}
    env["TAXI_PLUGINS_DISABLED"] = ",".join(extra_plugins())
    env.update(extra)
    return env


def as_on_a_plain_install(lines: list[str]) -> list[str]:
    """The docs show a plain install; this one may hold more plugins, disabled here."""
    extras = ", ".join(extra_plugins())
    return [line + f" (disabled: {extras})" if extras and line.startswith("plugins ") else line
            for line in lines]


def test_no_link_in_the_user_docs_leaves_the_repository() -> None:
    for doc in user_docs():
        text = doc.read_text()
        assert "../shared" not in text, f"{doc.name} mentions ../shared, which users never see"
        for page in ("PROTOCOL.md", "ARCHITECTURE.md", "CLIENTS.md"):
            assert page not in text, f"{doc.name} sends users to {page}, outside the repository"
        for match in LINK.finditer(text):
            target = (match.group(1) or match.group(2)).split("#")[0]
            if not target or re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # an anchor on the page, or a URL with a scheme
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
            assert path.exists() or path in PENDING, f"{doc.name} links to nothing: {target}"


def test_readme_shows_the_real_check_output(tmp_path: Path) -> None:
    shown = next(body for body in fences(section(README.read_text(), "Run it"))
                 if body.startswith("$ taxi-tornado check\n"))
    real = subprocess.run([sys.executable, "-m", "taxi_tornado", "check"], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=60)
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines() == as_on_a_plain_install(shown.splitlines()[1:])


def test_operations_shows_the_real_check_output(tmp_path: Path) -> None:
    """Section 2's settings file, checked as the page shows."""
    text = section(OPERATIONS.read_text(), "2. The settings file")
    script = next(body for body in fences(text, "sh") if "settings.toml <<EOF" in body)
    settings = script.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    (tmp_path / "settings.toml").write_text(settings.replace("$secret", "s" * 64))
    shown = next(body for body in fences(text, "sh") if "taxi-tornado check" in body)
    expected = [line.removeprefix("# ") for line in shown.splitlines() if line.startswith("# ")]
    real = subprocess.run([sys.executable, "-m", "taxi_tornado", "check"], cwd=tmp_path,
                          env=cli_env(TAXI_SETTINGS=str(tmp_path / "settings.toml")),
                          capture_output=True, text=True, timeout=60)
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines() == as_on_a_plain_install(expected)


def test_readme_first_contact_runs_as_written(tmp_path: Path) -> None:
    """The start-up line shown, then sign-up, log-in and the socket, from a second terminal."""
    run_it = section(README.read_text(), "Run it")
    server = spawn_server(tmp_path, cli_env(TAXI_DATA_DIR="taxi-data"))
    try:
        shown_line = next(body.strip() for body in fences(run_it, "")
                          if "listening on" in body)
        real_line = next(line for line in server.log().splitlines() if "listening on" in line)
        real_line = real_line.replace(f":{server.port} ", ":8000 ")
        assert real_line.split(" INFO ", 1)[1] == shown_line.removeprefix("INFO ")

        try_it = next(body for body in fences(run_it, "sh") if "api/sign_up" in body)
        first, rest = try_it.split("\n", 1)
        assert first == ". .venv/bin/activate && python3 -m pip install websockets"
        typed = next(body for body in fences(run_it, "") if body.startswith("> "))
        frame, reply = (line[2:] for line in typed.splitlines())
        output = run_in_a_terminal(rest.replace(":8000/", f":{server.port}/"), frame, reply)
        assert re.search(r'"username":"ann".*"group":"rider".*"photo":null', output), output
        assert "Connected to ws://127.0.0.1" in output and f"< {reply}" in output, output
    finally:
        assert server.stop() == 0


def run_in_a_terminal(script: str, typed: str, awaited: str, timeout: float = 60) -> str:
    """Run `script` with bash, type `typed` on its standard input, and keep the input open
    until `awaited` was printed (the websockets client ends at end of input)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(["bash", "-c", script], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                               text=True)
    assert process.stdin is not None and process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    process.stdin.write(typed + "\n")
    process.stdin.flush()
    seen = ""
    deadline = time.monotonic() + timeout
    while awaited not in seen and time.monotonic() < deadline:
        try:
            seen += lines.get(timeout=0.2)
        except queue.Empty:
            continue
    process.stdin.close()
    process.wait(timeout=20)
    while not lines.empty():
        seen += lines.get()
    return seen


def test_operations_admin_probe_runs_as_written(tmp_path: Path) -> None:
    """Section 16's probe: 0 and one line for staff, 2 and the API's answer for a rider."""
    env = cli_env(TAXI_DATA_DIR=str(tmp_path / "data"))
    for name, group in (("olga", "staff"), ("rita", "rider")):
        made = subprocess.run([sys.executable, "-m", "taxi_tornado", "createuser", name,
                               "--group", group, "--password-stdin"], input=PASSWORD + "\n",
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
    text = section(OPERATIONS.read_text(), "16. A scripted probe of the admin API")
    probe = next(body for body in fences(text, "sh") if "/api/admin/" in body)
    command, python = probe.split("\n", 1)
    assert command.startswith("TAXI_URL=https://taxi.example.com TAXI_STAFF=olga "
                              "TAXI_STAFF_PASSWORD=a-long-password")
    script = python.replace("/opt/taxi-tornado/bin/python", sys.executable)
    server = spawn_server(tmp_path, env)
    try:
        def probe_as(user: str) -> subprocess.CompletedProcess[str]:
            variables = {"TAXI_URL": server.url, "TAXI_STAFF": user,
                         "TAXI_STAFF_PASSWORD": PASSWORD}
            return subprocess.run(["bash", "-c", script], env={**os.environ, **variables},
                                  capture_output=True, text=True, timeout=60)

        staff = probe_as("olga")
        assert staff.returncode == 0, staff.stdout + staff.stderr
        assert staff.stdout.startswith("ok processes 1 connections 0 drivers {"), staff.stdout
        rider = probe_as("rita")
        assert rider.returncode == 2, rider.stdout + rider.stderr
        assert rider.stderr.strip() == (
            'probe: /api/admin/: 403 {"detail":"Only staff can use the admin API."}')
    finally:
        assert server.stop() == 0
