from __future__ import annotations

from django.urls import path

from oauth import views

app_name = "oauth"

urlpatterns = [
    path("install/", views.install, name="install"),
]
