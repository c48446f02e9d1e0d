"""JSON Schema (draft 2020-12) of every file of the export archive, derived from the kinds
registry and the models' columns, so the published schemas cannot drift from the code.

``python -m enginex.lifecycle.schema docs/schemas`` writes them (one per JSON Lines file,
each describing one line); tests/test_lifecycle_schema.py checks the files are current and
that an export's lines validate against them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary, String, Uuid

from enginex.db import UTCDateTime
from enginex.lifecycle.kinds import FORMAT, FORMAT_VERSION, KINDS, Kind

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _column_schema(column: Column[Any]) -> dict[str, Any]:
    kind = column.type
    schema: dict[str, Any]
    if isinstance(kind, Uuid):
        schema = {"type": "string", "format": "uuid"}
    elif isinstance(kind, UTCDateTime):
        schema = {"type": "string", "format": "date-time"}
    elif isinstance(kind, LargeBinary):
        schema = {"type": "string", "contentEncoding": "base64"}
    elif isinstance(kind, JSON):
        schema = {}
    elif isinstance(kind, String):
        schema = {"type": "string"}
        if kind.length:
            schema["maxLength"] = kind.length
    else:
        python_type = kind.python_type
        schema = {"type": {bool: "boolean", int: "integer", float: "number"}.get(
            python_type, "string")}
    if column.nullable and not column.primary_key:
        return {"anyOf": [schema, {"type": "null"}]} if schema else {}
    return schema


def schema_for(kind: Kind) -> dict[str, Any]:
    """The schema of one line of ``<kind>.jsonl``."""
    table = kind.model.__table__  # type: ignore[attr-defined]
    properties = {key: _column_schema(table.c[key]) for key in kind.exported_columns()}
    for name, column in kind.extra:
        properties[name] = {"anyOf": [_column_schema(column.property.columns[0]),
                                      {"type": "null"}]}
    if kind.name == "audit":
        properties["chain_tenant_id"] = {"type": "string", "format": "uuid",
                                         "description": "the organization id this entry "
                                                        "was hashed under"}
    required = sorted(k for k in properties)
    if kind.name == "credentials":
        properties["sealed_values"] = {
            "type": "string", "pattern": "^enginex-sealed-v1:[A-Za-z0-9_-]+$",
            "description": "only in an export with secrets: the credential's values sealed "
                           "to the import key (docs/DATA_LIFECYCLE.md \"Secrets in exports\")"}
    return {"$schema": DRAFT, "$id": f"enginex-export/{kind.filename}",
            "title": f"{kind.filename}: one line", "description": kind.description,
            "type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def org_schema() -> dict[str, Any]:
    return {"$schema": DRAFT, "$id": "enginex-export/org.jsonl", "title": "org.jsonl: one line",
            "description": "the organization itself (exactly one line)", "type": "object",
            "properties": {"id": {"type": "string", "format": "uuid"},
                           "slug": {"type": "string", "maxLength": 40},
                           "name": {"type": "string", "maxLength": 120},
                           "status": {"type": "string"}, "region": {"type": "string"},
                           "created_at": {"type": "string", "format": "date-time"}},
            "required": ["created_at", "id", "name", "region", "slug", "status"],
            "additionalProperties": False}


def manifest_schema() -> dict[str, Any]:
    file_entry = {"type": "object", "required": ["bytes", "sha256"],
                  "properties": {"bytes": {"type": "integer", "minimum": 0},
                                 "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                  "additionalProperties": False}
    return {"$schema": DRAFT, "$id": "enginex-export/manifest.json", "title": "manifest.json",
            "type": "object",
            "required": ["counts", "excluded", "exported_at", "files", "format",
                         "format_version", "kinds", "source"],
            "properties": {
                "format": {"const": FORMAT}, "format_version": {"const": FORMAT_VERSION},
                "exported_at": {"type": "string", "format": "date-time"},
                "source": {"$ref": "org.jsonl.schema.json"},
                "kinds": {"type": "array", "items": {"type": "string"}},
                "counts": {"type": "object",
                           "additionalProperties": {"type": "integer", "minimum": 0}},
                "files": {"type": "object", "additionalProperties": file_entry,
                          "description": "every other file of the archive: size and SHA-256"},
                "excluded": {"type": "object", "additionalProperties": {"type": "string"},
                             "description": "tenant tables not exported, with the reason"}},
            "additionalProperties": False}


def all_schemas() -> dict[str, dict[str, Any]]:
    """{file name in docs/schemas: schema}."""
    found = {"manifest.json.schema.json": manifest_schema(),
             "org.jsonl.schema.json": org_schema()}
    found.update({f"{k.filename}.schema.json": schema_for(k) for k in KINDS})
    return found


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    target = Path(argv[0] if argv else "docs/schemas")
    target.mkdir(parents=True, exist_ok=True)
    for name, schema in all_schemas().items():
        (target / name).write_text(render(schema), encoding="utf-8")


if __name__ == "__main__":
    import enginex.models  # noqa: F401  (every model registered)

    main(sys.argv[1:])
