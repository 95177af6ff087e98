"""Django configured once for the whole test session (tests/test_django.py, tests/test_channels.py).

``configure()`` is idempotent; the Redis URL is only known once the ``redis_server`` fixture runs,
so tests set it with ``override_settings(QUOTA=...)`` (see ``quota_setting``).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import django
from django.conf import settings

CUSTOM_MODEL = "custom_mykey"  # every test user's own model (the CUSTOM_MODELS hook below)


def custom_models(user: Any) -> list[str]:
    """The ``QUOTA["CUSTOM_MODELS"]`` hook of the tests: each user has registered one model."""
    return [CUSTOM_MODEL]


def quota_setting(redis_url: str | None = None, **more: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "MONTHLY_CREDIT": "5",
        "CUSTOM_MODELS": "tests.django_settings.custom_models",
        # Credit changes (the admin's top-up, quota_credit) write their audit row here (issue 12); one
        # file per test process, in the temporary directory.
        "HISTORY_URL": f"sqlite:///{tempfile.gettempdir()}/quota-tests-history-{os.getpid()}.db",
    }
    if redis_url:
        base["REDIS_URL"] = redis_url
    return {**base, **more}


def configure() -> None:
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only-not-secret",
        USE_TZ=True,
        ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"],
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django.contrib.staticfiles",
            "channels",
            "quota.contrib.django",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        ROOT_URLCONF="tests.django_urls",
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "DIRS": [],
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast; tests only
        STATIC_URL="/static/",
        STATICFILES_FINDERS=[
            "django.contrib.staticfiles.finders.FileSystemFinder",
            "django.contrib.staticfiles.finders.AppDirectoriesFinder",
            "quota.contrib.django.staticfiles.PanelFinder",
        ],
        LOGIN_URL="/accounts/login/",
        CHANNEL_LAYERS={},
        QUOTA=quota_setting(),
    )
    django.setup()
