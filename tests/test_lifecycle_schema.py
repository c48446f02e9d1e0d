"""The published JSON Schemas of the export format (docs/schemas) are the ones the code
derives from the kinds registry: regenerate them with
``python -m enginex.lifecycle.schema docs/schemas`` after changing a kind or a column."""

from __future__ import annotations

from pathlib import Path

import enginex.models  # noqa: F401  (every model registered)
from enginex.lifecycle.schema import all_schemas, render

DOCS = Path(__file__).parent.parent / "docs" / "schemas"


def test_the_published_schemas_match_the_code() -> None:
    published = {p.name for p in DOCS.glob("*.schema.json")}
    expected = all_schemas()
    assert published == set(expected), "run: python -m enginex.lifecycle.schema docs/schemas"
    for name, schema in expected.items():
        assert (DOCS / name).read_text(encoding="utf-8") == render(schema), \
            f"{name} is stale: run python -m enginex.lifecycle.schema docs/schemas"
