"""``PanelFinder``: the panel's JS and CSS as Django static files ``quota/<name>``.

The files are the service's own (``quota_server/static``, the repository's ``api/static``): one copy
for both panels, so a fix to panel.js
reaches both. A finder rather than a copy in this app's ``static/`` (two copies drift) or a
``STATICFILES_DIRS`` entry (a path into site-packages in every project's settings, exposing the
demo's files too): add it to ``STATICFILES_FINDERS`` and ``runserver``, ``collectstatic``,
WhiteNoise and ``{% static %}`` treat the three files like any app's. The system check
``quota.W002`` reports a project that forgot it, ``quota.E006`` files that are missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

import quota

PREFIX = "quota"
PANEL_FILES = ("panel.js", "i18n.js", "quota.css")


def panel_static_dir() -> Path:
    """The service's static directory. The service is installed beside ``quota`` as the package
    ``quota_server`` (the repository's ``api/`` folder, see pyproject.toml); it is found, not
    imported (that would import Flask). In a checkout that was never installed: ``api/static``."""
    spec = importlib.util.find_spec("quota_server")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve() / "static"
    return Path(quota.__file__).resolve().parent.parent / "api" / "static"


PANEL_STATIC_DIR = panel_static_dir()


class PanelFinder(BaseFinder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.storage = FileSystemStorage(location=PANEL_STATIC_DIR)
        self.storage.prefix = PREFIX  # collectstatic puts the files under quota/

    def check(self, **kwargs: Any) -> list[Error]:
        missing = [name for name in PANEL_FILES if not (PANEL_STATIC_DIR / name).is_file()]
        if missing:
            return [
                Error(
                    f"the quota panel's static files {missing} are not in {PANEL_STATIC_DIR}",
                    hint="reinstall quota; the panel needs quota_server/static from the same installation",
                    id="quota.E006",
                )
            ]
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> Any:
        find_all = find_all or kwargs.get("all", False)  # Django < 5.2 names it ``all``
        prefix, _, name = path.partition("/")
        found = str(PANEL_STATIC_DIR / name) if prefix == PREFIX and name in PANEL_FILES else None
        if find_all:
            return [found] if found else []
        return found or []

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        for name in PANEL_FILES:
            yield name, self.storage
