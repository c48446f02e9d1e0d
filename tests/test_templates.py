"""Placeholder templates: substitution rules, no logic, bounded output."""

from __future__ import annotations

import pytest

from enginex.kit.templates import (
    TemplateError,
    TemplateTooLarge,
    referenced_keys,
    render,
    render_value,
)

STATE = {
    "summary": "| Alice | 16 |",
    "total_hours": 37.5,
    "count": 3,
    "ok": True,
    "no": False,
    "nothing": None,
    "approval": {"decision": "approve", "comment": "fine"},
    "rows": [{"hours": 8}, {"hours": 7.5}],
    "tags": ["a", "b"],
    "unicode": "Zoë",
}


@pytest.mark.parametrize(("template", "expected"), [
    ("{{ summary }}", "| Alice | 16 |"),
    ("{{summary}}", "| Alice | 16 |"),
    ("{{   approval.decision\t}}", "approve"),
    ("Total: {{ total_hours }} h", "Total: 37.5 h"),
    ("{{ count }}", "3"),
    ("{{ ok }}/{{ no }}", "true/false"),
    ("[{{ nothing }}]", "[]"),
    ("[{{ missing }}]", "[]"),
    ("[{{ approval.missing.deeper }}]", "[]"),
    ("{{ rows.1.hours }}", "7.5"),
    ("{{ unicode }}", "Zoë"),
    ("no placeholders", "no placeholders"),
    ("{{ a + b }} and {{}} and { summary }", "{{ a + b }} and {{}} and { summary }"),
    ("{{ summary.__class__ }}", ""),
])
def test_render(template: str, expected: str) -> None:
    assert render(template, STATE) == expected


def test_lists_and_objects_render_as_pretty_json() -> None:
    assert render("{{ approval }}", STATE) == '{\n  "decision": "approve",\n  "comment": "fine"\n}'
    assert render("{{ tags }}", STATE) == '[\n  "a",\n  "b"\n]'


def test_values_are_not_rendered_again() -> None:
    state = {"a": "{{ b }}", "b": "secret"}
    assert render("{{ a }}", state) == "{{ b }}"


def test_no_code_runs() -> None:
    for template in ("{{ __import__('os').system('id') }}", "{% for x in y %}{% endfor %}",
                     "{{ ''.__class__.__mro__ }}", "${{7*7}}", "{{ 7*7 }}"):
        assert render(template, {}) == template


def test_output_is_capped() -> None:
    big = {"blob": "x" * 600_000}
    assert len(render("{{ blob }}", big)) == 600_000
    with pytest.raises(TemplateTooLarge):
        render("{{ blob }}{{ blob }}", big)
    with pytest.raises(TemplateTooLarge):
        render("{{ a }}" * 10, {"a": "y" * 200}, max_output=1000)
    with pytest.raises(TemplateTooLarge):
        render("z" * 2000, {}, max_output=1000)


def test_referenced_keys() -> None:
    template = "{{ summary }} {{approval.decision}} {{ summary }} {{ not a path }}"
    assert referenced_keys(template) == {"summary", "approval.decision"}


def test_render_value_renders_every_string() -> None:
    arguments = {"url": "https://example.org/{{ approval.decision }}",
                 "headers": {"X-Count": "{{ count }}"},
                 "items": ["{{ tags }}", 5, None, True, {"deep": "{{ unicode }}"}],
                 "{{ count }}": "keys stay"}
    assert render_value(arguments, STATE) == {
        "url": "https://example.org/approve",
        "headers": {"X-Count": "3"},
        "items": ['[\n  "a",\n  "b"\n]', 5, None, True, {"deep": "Zoë"}],
        "{{ count }}": "keys stay"}


def test_render_value_is_bounded() -> None:
    with pytest.raises(TemplateTooLarge):
        render_value(["{{ a }}"] * 20, {"a": "y" * 100}, max_output=1000)
    nested: object = "leaf"
    for _ in range(100):
        nested = [nested]
    with pytest.raises(TemplateError, match="nests more than"):
        render_value(nested, {})
