"""``path("quota/", include("quota.contrib.django.urls"))``: the panel (``quota:panel``) and the
logged-in user's stats (``quota:stats``). The admin pages are under the admin site."""

from django.urls import path

from . import views

app_name = "quota"
urlpatterns = [
    path("panel/", views.panel, name="panel"),
    path("stats/", views.stats, name="stats"),
]
