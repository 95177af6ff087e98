"""What installing quota puts on a project's path: ``quota`` and ``quota_server`` (the repository's
``api/`` folder, the Flask app), never a top-level ``api``, the most common Django app name
(issue 15: a project's own ``api`` app was shadowed, or shadowed ours)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def test_the_package_list_names_every_package_and_installs_api_as_quota_server():
    config = pyproject()["tool"]["setuptools"]
    in_tree = sorted(".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "quota").rglob("__init__.py"))
    assert sorted(config["packages"]) == sorted([*in_tree, "quota_server"])  # a new subpackage must be listed
    assert config["package-dir"] == {"quota_server": "api"}
    assert not any(name == "api" or name.startswith("api.") for name in config["packages"])
    assert set(config["package-data"]) <= set(config["packages"])
    entry_points = pyproject()["project"]["entry-points"]["quota.commands"]
    assert all(value.startswith("quota_server.") for value in entry_points.values())


def test_the_installed_distribution_adds_no_top_level_api():
    """The environment the tests run in, as a script outside the repository sees it (not from the
    repository, whose api/ folder and quota.egg-info the current directory would expose): its
    quota distribution's top-level names, and whether ``import api`` finds anything."""
    code = (
        "import importlib.util, json\n"
        "from importlib import metadata\n"
        "dist = metadata.distribution('quota')\n"
        "print(json.dumps({'top_level': sorted((dist.read_text('top_level.txt') or '').split()),\n"
        "  'from': json.loads(dist.read_text('direct_url.json') or '{}').get('url', 'site-packages'),\n"
        "  'api': importlib.util.find_spec('api') is not None}))"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(sys.prefix),
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    advice = (
        f"quota installed from {seen['from']} puts a top-level 'api' on the path: made before the rename? reinstall"
    )
    assert seen["top_level"] == ["quota", "quota_server"] and not seen["api"], advice


def test_a_wheel_installs_quota_and_quota_server_only(tmp_path):
    """A non-editable install: the wheel built from this checkout, installed into a directory that
    is the whole path of a fresh interpreter (with the environment's dependencies, but none of its
    .pth hooks, so no editable install can answer for it)."""
    source = tmp_path / "src"  # a copy, as the Dockerfile's: the build writes build/ and *.egg-info beside it
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("quota", "api"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if built.returncode and "Could not find a version that satisfies" in built.stderr:
        pytest.skip(f"pip can not fetch the build backend (offline?): {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "wheel").glob("quota-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"quota", "quota_server", wheel.name.split("-py3")[0] + ".dist-info"}
    for data in ("quota_server/static/panel.js", "quota_server/templates/panel.html", "quota/lua/record.lua"):
        assert data in names

    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    deps = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    code = (
        "import importlib.util, json, quota, quota_server, quota_server.cli\n"
        "from importlib import metadata\n"
        "from quota.contrib.django.staticfiles import PANEL_STATIC_DIR\n"
        "ep = {e.name: e.value for e in metadata.entry_points(group='quota.commands')}\n"
        "print(json.dumps({'api': importlib.util.find_spec('api') is not None, 'quota': quota.__file__,\n"
        "  'server': quota_server.__file__, 'static': str(PANEL_STATIC_DIR), 'serve': ep.get('serve')}))"
    )
    ran = subprocess.run(
        [sys.executable, "-S", "-c", code],  # -S: site-packages (and its .pth files) only as plain path entries
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join([str(target), *deps])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    assert seen["api"] is False
    assert seen["quota"].startswith(str(target)) and seen["server"] == str(target / "quota_server" / "__init__.py")
    assert seen["static"] == str(target / "quota_server" / "static")  # the Django panel finds the service's files
    assert seen["serve"] == "quota_server.cli:serve"
