"""An example Django + Channels chat site metered by quota (docs/DJANGO.md walks through it).

Runs from a checkout after ``pip install 'quota[django]' 'channels[daphne]' openai``; nothing here
imports the repository's ``examples`` package::

    cd examples/django_site
    export REDIS_URL=redis://localhost:6379/0
    python manage.py migrate && python manage.py createsuperuser
    python manage.py runserver          # daphne's runserver: HTTP and the chat socket
    # or: daphne site_config.asgi:application

Without ``LLM_BASE_URL`` the chat talks to a loopback stub LLM (examples/stub_llm.py).
"""

import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
# The consumer is examples/channels_chat/consumer.py and the stub LLM examples/stub_llm.py: put
# their directory on the path. In your project the consumer is a module of one of your apps.
sys.path.insert(0, str(BASE_DIR.parent))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "daphne",  # first: runserver serves ASGI (the chat socket) too
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "quota.contrib.django",  # QUOTA below; the panel, the admin's Quota > Usage, quota_* commands
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "site_config.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "site_config" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ASGI_APPLICATION = "site_config.asgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB", str(BASE_DIR / "example.db")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "quota.contrib.django.staticfiles.PanelFinder",  # the panel's JS and CSS
]
LOGIN_REDIRECT_URL = "/"
CHANNEL_LAYERS = {}  # the chat needs no layer: each socket talks to its own consumer

# quota: the single place of its configuration (keys: the QUOTA_* variables without QUOTA_).
QUOTA = {
    "REDIS_URL": os.environ.get("REDIS_URL"),  # required: quota.E004 without it
    "MONTHLY_CREDIT": os.environ.get("MONTHLY_CREDIT", "5"),  # CNY
    "HISTORY_URL": f"sqlite:///{BASE_DIR / 'quota-history.db'}",  # manage.py quota_dump moves old months here
    "SPOOL": os.environ.get("QUOTA_SPOOL"),  # e.g. /var/lib/chat/quota.spool in production
}
