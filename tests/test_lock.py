"""The test environment's pins (requirements/test.txt) cover what pyproject.toml asks for.

scripts/test.sh installs the pins by hash and then the project with --no-deps: a
dependency added to pyproject.toml without `bash scripts/lock.sh` would be missing from
CI's environment, or a range moved past its pin would test a version users cannot get.
"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

LOCKED_EXTRAS = ("test", "testing", "client")
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", re.MULTILINE)


def locked_versions() -> dict[str, Version]:
    text = (ROOT / "requirements" / "test.txt").read_text()
    return {canonicalize_name(name): Version(version) for name, version in PIN.findall(text)}


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in LOCKED_EXTRAS:
        lines += project["optional-dependencies"].get(extra, [])
    return [Requirement(line) for line in lines]


def test_every_requirement_of_the_project_and_its_test_extras_is_pinned_in_range() -> None:
    locked = locked_versions()
    problems = []
    for requirement in project_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        if name == "taxi-tornado":
            continue  # the extras that name the project itself
        version = locked.get(name)
        if version is None:
            problems.append(f"{requirement} is not pinned")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement} is pinned at {version}, outside its range")
    assert not problems, "run `bash scripts/lock.sh`: " + "; ".join(problems)


def test_every_pin_carries_a_hash() -> None:
    text = (ROOT / "requirements" / "test.txt").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text)
    unhashed = [block.split()[0] for block in blocks
                if PIN.match(block) and "--hash=sha256:" not in block]
    assert not unhashed
