""".env.example is documentation that must work when copied: `cp .env.example .env` then run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / ".env.example"
SETTINGS = ROOT / "addon_project" / "settings.py"
# Every way settings.py reads a variable: env.str("NAME", …), env_strict_bool("NAME", …), …
READ_CALL = re.compile(
    r'(?:env\.(?:str|int|float|bool|list|db)|env_strict_bool|env_required|env_list)\(\s*"([A-Z][A-Z0-9_]*)"'
)
# Outside .env.example on purpose: test-only switches.
NOT_FOR_OPERATORS = {"STATIC_FILES_UNCOLLECTED"}


def parse_example() -> dict[str, str]:
    """The variables the file sets (commented-out lines document a default and set nothing)."""
    values: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            values[match.group(1)] = match.group(2)
    return values


def run_settings(extra: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter with only `extra` (plus PATH) as environment."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DJANGO_SETTINGS_MODULE": "addon_project.settings",
    }
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_variable_settings_reads_is_documented_in_env_example() -> None:
    read = set(READ_CALL.findall(SETTINGS.read_text())) - NOT_FOR_OPERATORS
    documented = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]*)=", EXAMPLE.read_text(), re.M))

    assert read, "the pattern found no variable: it no longer matches settings.py"
    assert sorted(read - documented) == []


def test_copied_env_example_starts_in_development_with_the_defaults() -> None:
    values = {**parse_example(), "DEBUG": "true"}

    result = run_settings(
        values,
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECRET_KEY == 'dev-only-insecure-secret-key', len(s.FIELD_ENCRYPTION_KEYS), "
        "s.DATABASES['default']['NAME'], s.SHOPTET_TOKEN_CAP, s.ALLOWED_HOSTS)",
    )

    assert result.returncode == 0, result.stderr[-2000:]
    same_secret, keys, database, cap, hosts = result.stdout.split(" ", 4)
    assert same_secret == "True"
    assert keys == "1"
    assert Path(database).is_absolute(), database
    assert cap == "4"
    assert hosts.strip() == "['localhost', '127.0.0.1']"


def test_copied_env_example_with_the_required_secrets_passes_the_deploy_check() -> None:
    values = {
        **parse_example(),
        "SECRET_KEY": "x" * 60 + "-production-like-secret-key",
        "FIELD_ENCRYPTION_KEYS": "9t5cLEbJ1Zp1y0h6cuy3pKB5Qm9YQ3s6cU7j0t3yD1o=",
        "ALLOWED_HOSTS": "addon.example.com",
    }

    result = run_settings(
        values,
        "import sys; from django.core.management import execute_from_command_line; "
        "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])",
    )

    # The Shoptet credentials are empty in the example: that warning is the only expected one.
    assert result.returncode == 1, result.stderr[-2000:]
    issues = [
        line
        for line in result.stderr.splitlines()
        if re.match(r"^\?: \(|^\w+\.\w+: \(", line)
    ]
    assert [issue.split(")")[0] for issue in issues] == ["?: (shoptet_api.W001"], (
        result.stderr
    )


@pytest.mark.parametrize("name", ["SECRET_KEY", "FIELD_ENCRYPTION_KEYS"])
def test_an_empty_secret_in_production_is_still_refused(name: str) -> None:
    values = {
        "SECRET_KEY": "x" * 60,
        "FIELD_ENCRYPTION_KEYS": "9t5cLEbJ1Zp1y0h6cuy3pKB5Qm9YQ3s6cU7j0t3yD1o=",
        name: "",
    }

    result = run_settings(values, "import django; django.setup()")

    assert result.returncode != 0
    assert f"{name} must be set" in result.stderr
