"""Start-up configuration: missing secrets fail with the variable's name; production is strict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "9t5cLEbJ1Zp1y0h6cuy3pKB5Qm9YQ3s6cU7j0t3yD1o="
PRODUCTION = {
    "SECRET_KEY": "x" * 60 + "-production-like-secret-key",
    "FIELD_ENCRYPTION_KEYS": GOOD_KEY,
    "ALLOWED_HOSTS": "addon.example.com",
    "DEBUG": "false",
}


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing from the test run's own settings leaks in.
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("SHOPTET_", "SECRET_KEY", "FIELD_", "DEBUG", "ALLOWED_", "SECURE_")
        )
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("missing", ["SECRET_KEY", "FIELD_ENCRYPTION_KEYS"])
def test_missing_production_secret_stops_startup_naming_it(missing: str) -> None:
    env = {k: v for k, v in PRODUCTION.items() if k != missing}

    result = run_manage("check", env=env)

    assert result.returncode != 0
    assert f"{missing} must be set" in result.stderr


def test_plain_http_shoptet_url_needs_explicit_opt_in() -> None:
    env = {
        **PRODUCTION,
        "SHOPTET_OAUTH_URL": "http://127.0.0.1:9/action/ApiOAuthServer/",
    }

    refused = run_manage("check", env=env)
    allowed = run_manage("check", env={**env, "SHOPTET_ALLOW_HTTP": "true"})

    assert refused.returncode != 0
    assert "SHOPTET_OAUTH_URL must be an https:// URL" in refused.stderr
    assert allowed.returncode == 0, allowed.stderr


def test_misspelled_flag_is_refused() -> None:
    result = run_manage("check", env={**PRODUCTION, "DEBUG": "ture"})

    assert result.returncode != 0
    assert "DEBUG must be true or false" in result.stderr


def test_deploy_check_is_clean_in_production_configuration() -> None:
    env = {
        **PRODUCTION,
        "SHOPTET_CLIENT_ID": "cid",
        "SHOPTET_CLIENT_SECRET": "csecret",
        "SHOPTET_OAUTH_URL": "https://12345.myshoptet.com/action/ApiOAuthServer/",
        "SHOPTET_REDIRECT_URI": "https://addon.example.com/oauth/install/",
    }

    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
