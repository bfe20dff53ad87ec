"""The merchant's settings form, validated before anything is saved."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from eshops.models import EshopSettings


class EshopSettingsForm(forms.ModelForm[EshopSettings]):
    class Meta:
        model = EshopSettings
        fields = [
            "sync_orders",
            "sync_products",
            "sync_interval_minutes",
            "notification_email",
        ]
        labels = {
            "sync_orders": _("Synchronise orders"),
            "sync_products": _("Synchronise products"),
            "sync_interval_minutes": _("Synchronisation interval (minutes)"),
            "notification_email": _("Notification e-mail"),
        }
        help_texts = {
            "sync_interval_minutes": _("From 5 to 1440 minutes (one day)."),
            "notification_email": _("Leave empty if you want no e-mails."),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The browser's number spinner keeps to the range the server accepts.
        self.fields["sync_interval_minutes"].widget.attrs.update(min=5, max=1440)

    def clean_sync_interval_minutes(self) -> int:
        value = int(self.cleaned_data["sync_interval_minutes"])
        if not 5 <= value <= 1440:
            raise forms.ValidationError(_("Choose between 5 and 1440 minutes."))
        return value
