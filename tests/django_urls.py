"""The URLconf of the Django tests: the admin, Django's login, the quota app, and metered views."""

from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path

from quota.contrib.django import require_quota


@require_quota("system_deepseek")
def sync_chat(request):
    recorded = request.quota_turn.record(
        input_tokens=int(request.GET.get("in", 1000)), output_tokens=int(request.GET.get("out", 1000))
    )
    return JsonResponse({"type": "reply", "record": recorded.as_dict()})


@require_quota(lambda request: request.GET.get("model_id"))
async def async_chat(request):
    recorded = await request.quota_turn.record(
        input_tokens=int(request.GET.get("in", 1000)), output_tokens=int(request.GET.get("out", 1000))
    )
    return JsonResponse({"type": "reply", "record": recorded.as_dict()})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("quota/", include("quota.contrib.django.urls")),
    path("chat/sync/", sync_chat),
    path("chat/async/", async_chat),
]
