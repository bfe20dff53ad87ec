"""Production never imports the emulator: it is a development and test tool with its own package."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_PACKAGES = ["addon_project", "eshops", "oauth", "shoptet_api"]


def test_no_production_module_imports_the_emulator() -> None:
    offenders = []
    for package in PRODUCTION_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(name.split(".")[0] == "shoptet_emulator" for name in names):
                    offenders.append(str(path.relative_to(ROOT)))

    assert offenders == []


def test_a_production_process_loads_no_emulator_code() -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DJANGO_SETTINGS_MODULE": "addon_project.settings",
        "SECRET_KEY": "x" * 60,
        "FIELD_ENCRYPTION_KEYS": "9t5cLEbJ1Zp1y0h6cuy3pKB5Qm9YQ3s6cU7j0t3yD1o=",
        "ALLOWED_HOSTS": "addon.example.com",
    }
    code = (
        "import sys, django; django.setup()\n"
        "import addon_project.urls, addon_project.celery\n"
        "from django.core.management import get_commands\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'shoptet_emulator')\n"
        "print(loaded, 'shoptet_emulator' in get_commands())\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[] False"
