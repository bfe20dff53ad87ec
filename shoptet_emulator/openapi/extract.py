"""Extract the part of Shoptet's official OpenAPI that the emulator answers with.

The full description (``reference/shoptet-openapi.yaml``, 2 MB, OpenAPI 3.1, from
GitHub ``shoptet/developers`` ``openapi/openapi.yaml``) is too big to ship. This script
copies only the responses the emulator produces, every component schema they reference
(transitively), and the webhook event code list, into ``shoptet-openapi-subset.json``
next to it. The copy is verbatim apart from YAML → JSON (status codes become strings).

Regenerate after updating the reference copy::

    .venv/bin/python shoptet_emulator/openapi/extract.py \
        path/to/shoptet-openapi.yaml   # Shoptet's openapi/openapi.yaml

It refuses to write when a chosen error answer stops using the schema most documented
errors share, because the emulator validates its undocumented errors (401, 429, 503)
against that schema too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "reference" / "shoptet-openapi.yaml"
TARGET = HERE / "shoptet-openapi-subset.json"

# (path, method, statuses) the emulator answers. The error entries are representative
# documented answers with that status; the spec documents no 401, 429 or 503 at all.
OPERATIONS: list[tuple[str, str, tuple[str, ...]]] = [
    ("/api/eshop", "get", ("200",)),
    ("/api/orders", "get", ("200", "400")),
    ("/api/orders/changes", "get", ("200",)),
    ("/api/orders/snapshot", "get", ("202", "400")),
    ("/api/orders/{code}", "get", ("200",)),
    ("/api/products", "get", ("200", "400")),
    ("/api/products/changes", "get", ("200",)),
    ("/api/products/snapshot", "get", ("202", "400", "403")),
    ("/api/products/{guid}", "get", ("200", "403")),
    ("/api/system/jobs/{jobId}", "get", ("200", "403", "404")),
    ("/api/products", "post", ("403",)),
    ("/api/products/{guid}", "patch", ("423",)),
    ("/api/orders/{code}/pdf", "get", ("404", "500")),
    ("/api/webhooks", "get", ("200",)),
    ("/api/webhooks", "post", ("201",)),
    ("/api/webhooks/{id}", "get", ("200", "404")),
    ("/api/webhooks/{id}", "patch", ("200", "404")),
    ("/api/webhooks/{id}", "delete", ("200", "404")),
    ("/api/webhooks/renew-signature-key", "post", ("200",)),
    # The strictest documented error answer (data null, every key required, nothing else).
    ("/api/discount-coupons", "patch", ("403",)),
]
STRICT_ERROR = ("/api/discount-coupons", "patch", "403")

EVENT_ROW = re.compile(r"^([a-zA-Z]+:[a-zA-Z]+)(?: \(\*\))? *\|", re.MULTILINE)


def _load(source: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with source.open(encoding="utf-8") as fh:
        document: dict[str, Any] = yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader
    # YAML reads `200:` as an int; JSON keys (and JSON pointers) are strings.
    normalised: dict[str, Any] = json.loads(json.dumps(document, default=str))
    return normalised


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref)
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _webhook_events(description: str) -> list[str]:
    """Return the event names listed in the spec's "Webhook event types" code list."""
    start = description.index("## Webhook event types")
    end = description.find("\n## ", start + 1)
    section = description[start : end if end != -1 else None]
    return sorted({match.group(1) for match in EVENT_ROW.finditer(section)})


def _common_error_schema(document: dict[str, Any]) -> str:
    """Return the schema most documented error answers share (serialised)."""
    counts: Counter[str] = Counter(
        json.dumps(content["schema"], sort_keys=True)
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
        for status, response in operation.get("responses", {}).items()
        if status >= "400"
        for content in response.get("content", {}).values()
        if "schema" in content
    )
    return counts.most_common(1)[0][0]


def extract(source: Path) -> dict[str, Any]:
    """Build the subset document from the full official description."""
    document = _load(source)
    common_error = _common_error_schema(document)
    paths: dict[str, Any] = {}
    for path, method, statuses in OPERATIONS:
        operation = document["paths"][path][method]
        responses = {status: operation["responses"][status] for status in statuses}
        for status, response in responses.items():
            schema = json.dumps(
                response["content"]["application/json"]["schema"], sort_keys=True
            )
            if status >= "400" and status != STRICT_ERROR[2] and schema != common_error:
                sys.exit(
                    f"{method} {path} {status} no longer uses the common error schema"
                )
        paths.setdefault(path, {})[method] = {
            "operationId": operation.get("operationId"),
            "responses": responses,
        }
    schemas: dict[str, Any] = {}
    pending = _refs(paths)
    while pending:
        ref = pending.pop()
        name = ref.removeprefix("#/components/schemas/")
        if name == ref:
            sys.exit(f"unexpected reference {ref}")
        if name not in schemas:
            schemas[name] = document["components"]["schemas"][name]
            pending |= _refs(schemas[name])
    return {
        "openapi": document["openapi"],
        "info": {
            "title": document["info"]["title"] + " (emulator subset)",
            "version": document["info"]["version"],
            "x-source": "github.com/shoptet/developers openapi/openapi.yaml; "
            "regenerate with shoptet_emulator/openapi/extract.py",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "parameters": document["components"]["parameters"],
        },
        "x-webhook-events": _webhook_events(document["info"]["description"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=TARGET)
    args = parser.parse_args()
    subset = extract(args.source)
    args.output.write_text(
        json.dumps(subset, indent=1, sort_keys=False, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    sys.stdout.write(
        f"wrote {args.output.name}: {len(subset['paths'])} paths, "
        f"{len(subset['components']['schemas'])} schemas, "
        f"{len(subset['x-webhook-events'])} webhook events\n"
    )


if __name__ == "__main__":
    main()
