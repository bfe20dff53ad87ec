from __future__ import annotations

from django.apps import AppConfig


class EshopsConfig(AppConfig):
    name = "eshops"
    verbose_name = "E-shops (tenants)"
