"""``manage.py shoptet_emulator``: run the Shoptet emulator in the foreground."""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from shoptet_emulator import ShoptetEmulator

DEFAULT_CLIENT_ID = "emulator-client-id"
DEFAULT_CLIENT_SECRET = "emulator-client-secret"  # noqa: S105 - the emulator's public default


class Command(BaseCommand):
    help = (
        "Run a local Shoptet emulator (partner OAuth server, API, e-shop admin login) "
        "until Ctrl-C. Point SHOPTET_OAUTH_URL and SHOPTET_API_URL at the printed URLs."
    )
    # The emulator stands in for Shoptet; the addon's own checks (e.g. missing
    # SHOPTET_* settings) are not its business.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument(
            "--token-lifetime", type=int, default=1800, help="API token expires_in (s)"
        )
        parser.add_argument("--client-id", help="default: SHOPTET_CLIENT_ID")
        parser.add_argument("--client-secret", help="default: SHOPTET_CLIENT_SECRET")
        parser.add_argument(
            "--redirect-uri",
            help="the addon's install URL; default: SHOPTET_REDIRECT_URI, else any is accepted",
        )
        parser.add_argument("--seed-eshops", type=int, default=0, metavar="N")
        parser.add_argument(
            "--orders", type=int, default=0, help="orders to seed per e-shop"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        client_id = (
            options["client_id"]
            or getattr(settings, "SHOPTET_CLIENT_ID", "")
            or DEFAULT_CLIENT_ID
        )
        client_secret = (
            options["client_secret"]
            or getattr(settings, "SHOPTET_CLIENT_SECRET", "")
            or DEFAULT_CLIENT_SECRET
        )
        redirect_uri = (
            options["redirect_uri"]
            or getattr(settings, "SHOPTET_REDIRECT_URI", "")
            or None
        )
        emulator = ShoptetEmulator(
            host=options["host"],
            port=options["port"],
            client_id=client_id,
            client_secret=client_secret,
            redirect_uri=redirect_uri,
            token_lifetime=options["token_lifetime"],
        )
        for _ in range(max(0, options["seed_eshops"])):
            shop = emulator.add_eshop()
            if options["orders"]:
                emulator.add_orders(shop.eshop_id, options["orders"])
        emulator.start()
        base = emulator.base_url
        # Only the client id is shown: the secret, codes and tokens never reach the output.
        lines = [
            f"Shoptet emulator running on {base}",
            f"  SHOPTET_OAUTH_URL={emulator.oauth_url}",
            f"  SHOPTET_API_URL={emulator.api_url}",
            "  SHOPTET_ALLOW_HTTP=true",
            f"  client id: {client_id}",
            f"  install callback: {redirect_uri or '(any redirect_uri accepted)'}",
            f"  e-shops seeded: {len(emulator.eshops)}",
            f"  new install:  curl -X POST {base}/_emulator/install -d '{{}}'",
            f"  counters:     curl {base}/_emulator/stats",
            "Quit with Ctrl-C.",
        ]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            self.stdout.write("Stopping the Shoptet emulator.")
        finally:
            emulator.stop()
