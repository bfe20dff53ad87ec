"""Trigram indexes for the tenant list's text search (PostgreSQL only).

The admin searches name, URL and contact e-mail as case-insensitive substrings; Django writes
that as `UPPER(column::text) LIKE UPPER('%term%')`, which no B-tree index can answer. A GIN index
of pg_trgm trigrams on the same expression can, so a search reads the matching rows instead of
all 100,000 tenants.

PostgreSQL only, and not in the model's Meta: SQLite has neither GIN nor pg_trgm, and its tenant
tables are small. On SQLite this migration does nothing.

CREATE EXTENSION: pg_trgm is a trusted extension since PostgreSQL 13, so the migrating role needs
only the CREATE privilege on the database (the database owner has it). On older servers, or
where the role lacks it, a superuser runs `CREATE EXTENSION pg_trgm;` in the database once before
`migrate`; the IF NOT EXISTS below then finds it. CI migrates as the superuser postgres.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

# Index name -> column. The expression must match Django's icontains SQL exactly to be used.
TRIGRAM_INDEXES = {
    "eshop_name_trgm_idx": "name",
    "eshop_url_trgm_idx": "url",
    "eshop_contact_email_trgm_idx": "contact_email",
}


def create_trigram_indexes(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, column in TRIGRAM_INDEXES.items():
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON eshops_eshop "
            f"USING gin ((UPPER({column}::text)) gin_trgm_ops)"
        )


def drop_trigram_indexes(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in TRIGRAM_INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("eshops", "0006_tenant_scale_indexes"),
    ]

    operations = [
        migrations.RunPython(create_trigram_indexes, drop_trigram_indexes),
    ]
