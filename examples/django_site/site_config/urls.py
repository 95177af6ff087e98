from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import include, path

from quota.contrib.django import allowed_model_ids


@login_required
def chat(request):
    return render(request, "chat.html", {"models": allowed_model_ids(request.user)})


urlpatterns = [
    path("", chat, name="chat"),
    path("admin/", admin.site.urls),  # Quota > Usage: usage per user, credit top-up
    path("accounts/", include("django.contrib.auth.urls")),  # the login the panel and the chat use
    path("quota/", include("quota.contrib.django.urls")),  # /quota/panel/: the user's own usage
]
