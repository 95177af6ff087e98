"""The admin's "Quota > Usage": this month's usage per user (read-only) and a credit top-up.

Not a queryset of a table: the page lists the project's users (search, 50 per page) and reads each
one's month from Redis (``get_token_stats(months=0)``: one round trip each, no SQL history).
Viewing needs ``quota.view_usage``; the top-up (``set_monthly_credit``: this month's credit, or
another month's) needs ``quota.top_up_credit``. Superusers have both.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse

from quota import InvalidInput, StorageUnavailable

from .hooks import quota_user_id
from .meters import get_meter
from .models import Usage

PER_PAGE = 50
TOP_UP = "quota.top_up_credit"


class TopUpForm(forms.Form):
    credit = forms.DecimalField(label="Monthly credit (CNY)", min_value=Decimal(0), max_digits=21, decimal_places=9)
    month = forms.RegexField(
        label="Month (YYYY-MM)",
        regex=r"^\d{4}-(0[1-9]|1[0-2])$",
        required=False,
        help_text="Empty: the current UTC month.",
    )


@admin.register(Usage)
class UsageAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("", self.admin_site.admin_view(self.changelist_view), name="{}_{}_changelist".format(*info)),
            path("<str:pk>/top-up/", self.admin_site.admin_view(self.top_up_view), name="{}_{}_top_up".format(*info)),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        user_model = get_user_model()
        query = request.GET.get("q", "").strip()
        users = user_model._default_manager.order_by("pk")
        if query:
            users = users.filter(Q(**{f"{user_model.USERNAME_FIELD}__icontains": query}))
        page = Paginator(users, PER_PAGE).get_page(request.GET.get("p"))
        rows, error = [], None
        meter = get_meter()
        for user in page:
            user_id = quota_user_id(user)
            stats = None
            if error is None:
                try:
                    stats = meter.get_token_stats(user_id, months=0)
                except StorageUnavailable as exc:
                    error = str(exc)
            rows.append(
                {
                    "user": user,
                    "user_id": user_id,
                    "stats": stats,
                    "calls": sum(m["calls"] for m in stats["models"].values()) if stats else None,
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Quota usage this month",
            "rows": rows,
            "page": page,
            "q": query,
            "error": error,
            "can_top_up": request.user.has_perm(TOP_UP),
            **(extra_context or {}),
        }
        return render(request, "admin/quota/usage/change_list.html", context)

    def top_up_view(self, request: HttpRequest, pk: str) -> HttpResponse:
        if not request.user.has_perm(TOP_UP):
            raise PermissionDenied
        user = get_object_or_404(get_user_model()._default_manager, pk=pk)
        user_id = quota_user_id(user)
        form = TopUpForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                result = get_meter().set_monthly_credit(
                    user_id, form.cleaned_data["credit"], form.cleaned_data["month"] or None
                )
            except (InvalidInput, StorageUnavailable) as exc:
                form.add_error(None, str(exc))
            else:
                done = result.as_dict()
                self.message_user(
                    request,
                    f"{user.get_username()}: credit for {done['month']} set to "
                    f"{done['monthly_credit']} CNY ({done['monthly_used']} used)",
                    messages.SUCCESS,
                )
                self.log_change(request, user, f"quota credit for {done['month']} set to {done['monthly_credit']} CNY")
                return HttpResponseRedirect(reverse("admin:quota_usage_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "form": form,
            "target": user,
            "user_id": user_id,
            "title": f"Top up {user.get_username()}'s credit",
        }
        return render(request, "admin/quota/usage/top_up.html", context)
