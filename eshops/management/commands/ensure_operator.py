"""Create (or reset) an operator account for the Django admin; the password comes from OPERATOR_PASSWORD."""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Create or reset a superuser whose password is read from the OPERATOR_PASSWORD environment variable."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("OPERATOR_PASSWORD", "")
        if len(password) < 12:
            raise CommandError("set OPERATOR_PASSWORD to at least 12 characters")
        user, created = get_user_model().objects.get_or_create(
            username=options["username"],
            defaults={"is_staff": True, "is_superuser": True},
        )
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        self.stdout.write(
            f"operator {options['username']!r} {'created' if created else 'updated'}"
        )
