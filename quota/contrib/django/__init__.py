"""``quota.contrib.django``: quota as an installable Django app (``pip install 'quota[django]'``).

Add ``"quota.contrib.django"`` to ``INSTALLED_APPS`` and a ``QUOTA = {...}`` setting (see
:mod:`.conf`); then, from anywhere in the project::

    from quota.contrib.django import get_meter, get_async_meter, require_quota, QuotaConsumerMixin

Names are imported lazily, so that listing the app in ``INSTALLED_APPS`` imports nothing that
needs the app registry. The whole guide is docs/DJANGO.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "get_meter": "meters",
    "get_async_meter": "meters",
    "build_meter": "meters",
    "quota_settings": "conf",
    "QuotaSettingsError": "conf",
    "quota_user_id": "hooks",
    "resolve_model": "hooks",
    "allowed_model_ids": "hooks",
    "ModelNotAllowed": "hooks",
    "error_event": "hooks",
    "require_quota": "decorators",
    "QuotaConsumerMixin": "consumers",
    "MeteredReply": "consumers",
    "usage_recorded": "signals",
    "quota_exceeded": "signals",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
