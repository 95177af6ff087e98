"""ASGI entry point: Django over HTTP, the metered chat consumer on ``ws/chat/``.

``daphne site_config.asgi:application`` (or ``python manage.py runserver``, with daphne installed).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")
django_asgi_app = get_asgi_application()  # first: it sets up the apps the rest imports from

import openai  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from channels_chat.consumer import ChatConsumer  # noqa: E402 - examples/channels_chat (see settings.py)
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import path  # noqa: E402


def platform_llm() -> openai.AsyncOpenAI:
    """The platform's LLM for system models: LLM_BASE_URL/LLM_API_KEY, else a loopback stub."""
    base_url = os.environ.get("LLM_BASE_URL")
    if not base_url:
        from stub_llm import StubLLM  # examples/stub_llm.py: no key, no network

        base_url = StubLLM().start().base_url
    return openai.AsyncOpenAI(base_url=base_url, api_key=os.environ.get("LLM_API_KEY", "none"), max_retries=0)


# No meter here: the consumer asks get_async_meter() for its event loop's AsyncMeter.
application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter(
                    [
                        path("ws/chat/", ChatConsumer.as_asgi(llm=platform_llm())),
                    ]
                )
            )
        ),
    }
)
