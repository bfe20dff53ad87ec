from __future__ import annotations

from django.apps import AppConfig


class SyncConfig(AppConfig):
    name = "sync"
    verbose_name = "Background sync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the job:finished and order:* webhook handlers and the declared resources.
        from sync import handlers, resources  # noqa: F401
