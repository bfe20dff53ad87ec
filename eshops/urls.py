from __future__ import annotations

from django.urls import path

from eshops import views

app_name = "eshops"

urlpatterns = [
    path("", views.settings_entry, name="settings"),
    path("page/", views.settings_page, name="settings_page"),
]
