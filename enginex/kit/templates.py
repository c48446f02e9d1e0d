"""Placeholder substitution for prompts, questions, reports and tool arguments.

``{{ dotted.path }}`` (whitespace inside the braces optional) is replaced by the value at that
path in the state; nothing else is interpreted. There is no logic, no filters and no code
execution, and substituted values are never scanned again, so a value containing ``{{ x }}``
stays literal text. Formatting of a value:

* missing or null -> empty string; strings as they are;
* booleans -> ``true``/``false``; numbers -> their JSON form (``37.5``, ``3``);
* lists and objects -> pretty-printed JSON (2-space indent, UTF-8 kept).

Text between braces that is not a dotted path (``{{ a + b }}``, ``{{}}``) is left unchanged.
The rendered output is capped at MAX_OUTPUT characters (TemplateTooLarge beyond it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from enginex.kit.expressions import lookup

MAX_OUTPUT = 1_000_000
MAX_VALUE_DEPTH = 64

_PLACEHOLDER = re.compile(
    r"\{\{\s*([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")


class TemplateError(ValueError):
    """A template could not be rendered; the message is safe to show and store."""


class TemplateTooLarge(TemplateError):
    pass


def _parts(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def format_value(value: Any) -> str:
    """The text a value is rendered as (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value) if math.isfinite(value) else ""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        return ""


def render(template: str, state: Mapping[str, Any], *, max_output: int = MAX_OUTPUT) -> str:
    """Substitute every ``{{ path }}`` in ``template`` with its value from ``state``.

    Raises TemplateTooLarge when the output would exceed ``max_output`` characters.
    """
    pieces: list[str] = []
    size = 0
    last = 0
    for match in _PLACEHOLDER.finditer(template):
        literal = template[last:match.start()]
        value = format_value(lookup(state, _parts(match.group(1))))
        size += len(literal) + len(value)
        if size > max_output:
            raise TemplateTooLarge(
                f"the rendered text exceeds {max_output} characters; reference smaller values")
        pieces.append(literal)
        pieces.append(value)
        last = match.end()
    tail = template[last:]
    if size + len(tail) > max_output:
        raise TemplateTooLarge(
            f"the rendered text exceeds {max_output} characters; reference smaller values")
    pieces.append(tail)
    return "".join(pieces)


def referenced_keys(template: str) -> set[str]:
    """The dotted paths a template reads, e.g. ``{'summary', 'approval.decision'}``."""
    return {m.group(1) for m in _PLACEHOLDER.finditer(template)}


def render_value(obj: Any, state: Mapping[str, Any], *, max_output: int = MAX_OUTPUT) -> Any:
    """Render every string inside a JSON-like object (dict keys are kept as they are).

    Strings always render to strings, even a lone ``"{{ x }}"`` whose value is a list.
    Other scalars are returned unchanged. The total rendered text is capped at ``max_output``
    characters, and nesting at MAX_VALUE_DEPTH levels (TemplateError beyond it).
    """
    budget = [max_output]

    def walk(value: Any, depth: int) -> Any:
        if depth > MAX_VALUE_DEPTH:
            raise TemplateError(f"the value nests more than {MAX_VALUE_DEPTH} levels deep")
        if isinstance(value, str):
            rendered = render(value, state, max_output=budget[0])
            budget[0] -= len(rendered)
            return rendered
        if isinstance(value, Mapping):
            return {key: walk(item, depth + 1) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [walk(item, depth + 1) for item in value]
        return value

    return walk(obj, 0)
