"""Set-up and CI stay what the README says: the same test command, floors from pyproject.

`.ci/run` must run exactly the README's test command (so CI builds the environment a new
user builds), and `scripts/oldest-constraints` must pin each dependency to its floor.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_COMMAND = re.compile(r"^(scripts/setup && \.venv/bin/python -m pytest [^#\n]*?tests)\b",
                          re.M)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    found = TEST_COMMAND.findall(readme)
    assert found, "README.md has no `scripts/setup && .venv/bin/python -m pytest ... tests` line"
    command = found[0].strip()
    assert f"'{command}'" in (REPO / ".ci" / "run").read_text()
    assert "scripts/setup && .venv/bin/crds-fs demo" in readme  # the other first command
    # the first two commands of the README are these two
    first = [line for line in readme.split("```sh", 1)[1].split("```", 1)[0].splitlines()
             if line.strip()]
    assert first[0].startswith("scripts/setup && .venv/bin/crds-fs demo")
    assert first[1].startswith(command)


def _constraints(pyproject: Path) -> list[str]:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "oldest-constraints"),
                           str(pyproject)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if not line.startswith("# oldest")]


def test_oldest_constraints_pin_every_floor(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('''
[project]
name = "demo-project"
dependencies = ["Foo_Bar>=1.2", "baz[extra]~=3.4; python_version >= '3.11'", "qux",
                "pinned==2.0.1", "ranged>=0.5,<2"]
[project.optional-dependencies]
test = ["Foo-bar>=1.5", "demo-project[other]", "tool >= 7"]
''')
    assert _constraints(pyproject) == [
        "baz==3.4", "foo-bar==1.5", "pinned==2.0.1",
        "# qux: no lower bound in pyproject", "ranged==0.5", "tool==7"]


def test_oldest_constraints_of_this_project_cover_every_dependency() -> None:
    with open(REPO / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    lines = _constraints(REPO / "pyproject.toml")
    pinned = {line.split("==")[0] for line in lines if "==" in line}
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for requirement in wanted:
        name = re.split(r"[<>=~!\[; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pinned, requirement
