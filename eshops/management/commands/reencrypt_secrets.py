"""Re-encrypt every EncryptedTextField value under the newest key in FIELD_ENCRYPTION_KEYS.

Rotation: put the new key first, keep the old ones after it, deploy, run this command, then drop the
old keys. Rows are locked batch by batch, so a concurrent reinstall is never overwritten by a stale
value; running it twice is harmless.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models, transaction
from django.db.models import Value
from django.db.models.functions import Cast

from addon_project.encryption import DecryptionError, EncryptedTextField, reencrypt


def encrypted_fields() -> list[tuple[type[models.Model], list[str]]]:
    found = []
    for model in apps.get_models():
        names = [
            field.attname
            for field in model._meta.concrete_fields
            if isinstance(field, EncryptedTextField)
        ]
        if names:
            found.append((model, names))
    return found


class Command(BaseCommand):
    help = "Re-encrypt all encrypted values under the newest FIELD_ENCRYPTION_KEYS key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size: int = options["batch_size"]
        total = 0
        for model, names in encrypted_fields():
            label = model._meta.label
            pks = list(
                model._default_manager.order_by("pk").values_list("pk", flat=True)
            )
            for start in range(0, len(pks), batch_size):
                batch = pks[start : start + batch_size]
                with transaction.atomic():
                    # Raw ciphertext in, raw ciphertext out: values are never decrypted into Python
                    # objects here, and rows are locked while we rewrite them.
                    rows = model._default_manager.select_for_update().filter(
                        pk__in=batch
                    )
                    raw = rows.annotate(
                        **{f"raw_{n}": Cast(n, models.TextField()) for n in names}
                    ).values_list("pk", *[f"raw_{n}" for n in names])
                    for pk, *values in raw:
                        updates = {}
                        for name, value in zip(names, values, strict=True):
                            if value is None:
                                continue
                            try:
                                updates[name] = reencrypt(value)
                            except DecryptionError:
                                raise CommandError(
                                    f"{label} pk={pk} field {name}: no key in FIELD_ENCRYPTION_KEYS decrypts it "
                                    "(this batch was rolled back; earlier batches are already re-encrypted)"
                                ) from None
                        if updates:
                            # A plain-text Value bypasses the field, which would encrypt the ciphertext again.
                            model._default_manager.filter(pk=pk).update(
                                **{
                                    n: Value(v, output_field=models.TextField())
                                    for n, v in updates.items()
                                }
                            )
                            total += len(updates)
            self.stdout.write(f"{label}: {len(pks)} rows checked")
        self.stdout.write(
            self.style.SUCCESS(f"re-encrypted {total} values under the newest key")
        )
