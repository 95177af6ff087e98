"""Who may import whom: the library never imports the app, benchmarks never import tests, and the
app's commands reach the ``quota`` command line through an entry point group."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from quota import cli

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter at the repository root; it prints one JSON line."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_every_quota_module_never_imports_the_app():
    # quota.contrib.django's modules need a configured Django: set one up first (tests/django_settings.py)
    seen = run_python(
        "import importlib, json, pkgutil, sys, quota\n"
        "from tests.django_settings import configure; configure()\n"
        "names = [m.name for m in pkgutil.walk_packages(quota.__path__, 'quota.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "app = sorted(m for m in sys.modules if m.split('.')[0] in ('quota_server', 'api'))\n"
        "print(json.dumps({'modules': names, 'app': app}))"
    )
    assert {"quota.cli", "quota.testing", "quota.history.dump", "quota.contrib.django.views"} <= set(seen["modules"])
    assert seen["app"] == []


def bench_modules() -> list[str]:
    return sorted(f"bench.{p.stem}" for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")


def test_no_benchmark_imports_the_tests():
    """Read (every import statement, wherever it stands) and run (import every bench module)."""
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "tests" or n.startswith("tests.") for n in names), f"{path.name} imports {names}"
    seen = run_python(
        "import importlib, json, sys\n"
        f"for name in {bench_modules()!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'tests')))"
    )
    assert seen == []


def declared_commands() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["entry-points"][cli.COMMAND_GROUP]


def test_the_app_commands_are_declared_as_entry_points_and_the_fallback_agrees():
    assert (
        declared_commands()
        == cli.BUILTIN_COMMANDS
        == {
            "serve": "quota_server.cli:serve",
            "token": "quota_server.cli:token",
        }
    )
    for name, value in declared_commands().items():
        command = cli.load_command(metadata.EntryPoint(name, value, cli.COMMAND_GROUP))
        assert isinstance(command, click.Command) and command.name == name


def test_the_group_loads_commands_from_the_installed_entry_points(monkeypatch):
    """What an install from this pyproject.toml gives: the commands come from the metadata."""
    declared = [metadata.EntryPoint(n, v, cli.COMMAND_GROUP) for n, v in declared_commands().items()]
    asked = []

    def entry_points(*, group: str):  # noqa: ANN202
        asked.append(group)
        return declared if group == cli.COMMAND_GROUP else []

    monkeypatch.setattr(cli.metadata, "entry_points", entry_points)
    monkeypatch.setattr(cli, "BUILTIN_COMMANDS", {})
    group = cli.QuotaGroup(commands={"stats": cli.main.commands["stats"]})
    assert group.list_commands(click.Context(group)) == ["serve", "stats", "token"]
    result = CliRunner().invoke(group, ["token", "--help"])
    assert result.exit_code == 0 and "Mint a token" in result.output
    assert asked and set(asked) == {cli.COMMAND_GROUP}


def test_an_entry_point_that_cannot_be_imported_says_so_and_exits_2():
    command = cli.load_command(metadata.EntryPoint("serve", "no_such_package.cli:serve", cli.COMMAND_GROUP))
    result = CliRunner().invoke(command, ["--port", "0"])
    assert result.exit_code == 2 and "quota serve` is unavailable" in result.output


@pytest.mark.parametrize("name", ["serve", "token"])
def test_the_quota_group_lists_and_runs_the_app_commands(name):
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0 and f"  {name} " in result.output
    assert CliRunner().invoke(cli.main, [name, "--help"]).exit_code == 0
