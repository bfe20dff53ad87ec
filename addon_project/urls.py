from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from addon_project import health, metrics, pages
from eshops import dashboard
from shoptet_api import webhooks

urlpatterns = [
    path("", pages.home, name="home"),
    path("favicon.ico", pages.favicon, name="favicon"),
    path("admin/dashboard/", dashboard.dashboard, name="operator-dashboard"),
    path("admin/", admin.site.urls),
    path("oauth/", include("oauth.urls")),
    path("settings/", include("eshops.urls")),
    path("webhooks/shoptet/", webhooks.receive, name="shoptet-webhook"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
]
