"""The SKILL.md format (the shape of Anthropic's "Agent Skills"), shared by organization
skills and the skills inside agent packages (``skills/<name>/SKILL.md``).

A SKILL.md is optional front matter between two ``---`` lines, then Markdown instructions::

    ---
    name: timesheet-review
    description: How to read a timesheet and spot overtime.
    ---
    # Reviewing timesheets
    ...

The front matter is a small, safe subset of YAML, parsed here without a YAML library (PyYAML
is not a runtime dependency of EngineX): one ``key: value`` per line, where a value is plain
text, a "double-quoted" string (JSON escapes), a 'single-quoted' string ('' for a quote), or a
``|`` / ``>`` block of indented lines below the key. Plain values may continue on indented
lines (folded with spaces, as in YAML). A key with nothing after the colon may hold an
indented nested block (``metadata:``, lists of ``allowed-tools``); it is accepted and ignored.
``#`` starts a comment line. Only ``name`` and ``description`` are read; other keys (such as
``license``, or ``allowed-tools: [Read, Grep]`` in YAML flow style) are accepted unchecked and
not kept.

Errors are SkillMdError with the 1-based line of the whole file and the key at fault, so the
author can find the spot in their editor. This module imports nothing else of EngineX (the
package loader uses it too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
NAME_RULE = ("1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit "
             "(such as timesheet-review)")
MAX_DESCRIPTION_CHARS = 1024
FENCE = "---"
# The keys EngineX reads; others (license, allowed-tools, metadata, ...) are only skipped.
READ_KEYS = frozenset({"name", "description"})
_KEY_LINE = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)[ \t]*:(?:[ \t]+(.*)|[ \t]*)$")
_BLOCK_HEADER = re.compile(r"^([|>])([+-]?)[ \t]*(?:#.*)?$")
_NAME = re.compile(NAME_PATTERN)


class SkillMdError(ValueError):
    """A SKILL.md that cannot be read: ``line`` (1-based, of the whole file) and ``key`` name
    the spot when known; ``str(error)`` is a message for the author."""

    def __init__(self, message: str, *, line: int | None = None, key: str | None = None) -> None:
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}")
        self.message = message
        self.line = line
        self.key = key


@dataclass(frozen=True)
class SkillDocument:
    """A parsed SKILL.md: the front matter's name and description (None when absent) and
    the Markdown instructions after it (front matter removed, outer blank lines trimmed)."""

    name: str | None
    description: str | None
    instructions: str
    has_front_matter: bool


def _strip_comment(value: str) -> str:
    """A plain value without a trailing `` # comment`` (YAML: '#' after a space)."""
    match = re.search(r"[ \t]#", value)
    return (value[:match.start()] if match else value).rstrip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _quoted(raw: str, line_no: int, key: str) -> str:
    if raw.startswith('"'):
        end = _closing_double_quote(raw)
        if end is None:
            raise SkillMdError(f"the value of '{key}' opens a \" quote that is not closed on "
                               "this line", line=line_no, key=key)
        rest = raw[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise SkillMdError(f"unexpected text after the quoted value of '{key}'",
                               line=line_no, key=key)
        try:
            value = json.loads(raw[:end + 1])
        except ValueError:
            raise SkillMdError(f"the quoted value of '{key}' has an escape sequence that is "
                               "not supported; use \\\", \\\\, \\n, \\t or \\uXXXX",
                               line=line_no, key=key) from None
        assert isinstance(value, str)
        return value
    # single-quoted: '' is a literal quote, no other escapes
    index = 1
    chars: list[str] = []
    while index < len(raw):
        char = raw[index]
        if char == "'":
            if raw[index + 1:index + 2] == "'":
                chars.append("'")
                index += 2
                continue
            rest = raw[index + 1:].strip()
            if rest and not rest.startswith("#"):
                raise SkillMdError(f"unexpected text after the quoted value of '{key}'",
                                   line=line_no, key=key)
            return "".join(chars)
        chars.append(char)
        index += 1
    raise SkillMdError(f"the value of '{key}' opens a ' quote that is not closed on this line",
                       line=line_no, key=key)


def _closing_double_quote(raw: str) -> int | None:
    index = 1
    while index < len(raw):
        if raw[index] == "\\":
            index += 2
            continue
        if raw[index] == '"':
            return index
        index += 1
    return None


def _block(lines: list[str], style: str, chomp: str) -> str:
    """The text of a ``|`` (literal) or ``>`` (folded) block from its indented lines."""
    present = [ln for ln in lines if ln.strip()]
    margin = min((_indent(ln) for ln in present), default=0)
    body = [ln[margin:] if ln.strip() else "" for ln in lines]
    if style == "|":
        text = "\n".join(body)
    else:
        paragraphs: list[str] = []
        current: list[str] = []
        for ln in body:
            if ln:
                current.append(ln)
            else:
                paragraphs.append(" ".join(current))
                current = []
        paragraphs.append(" ".join(current))
        text = "\n".join(paragraphs)
    stripped = text.rstrip("\n")
    if chomp == "-":
        return stripped
    if chomp == "+":
        return text + "\n"
    return stripped + "\n" if stripped else ""


def parse_front_matter(lines: list[str], first_line_no: int) -> dict[str, str | None]:
    """``key: value`` pairs of the lines between the fences (``first_line_no`` is the file
    line of ``lines[0]``). A key holding a nested block maps to None. Raises SkillMdError."""
    values: dict[str, str | None] = {}
    index = 0
    while index < len(lines):
        line_no = first_line_no + index
        line = lines[index]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        if line[:1] == "\t":
            raise SkillMdError("tabs cannot indent front matter; use spaces", line=line_no)
        if _indent(line) > 0:
            raise SkillMdError("unexpected indentation; each front matter line is "
                               "'key: value' at the start of the line", line=line_no)
        match = _KEY_LINE.match(line.rstrip())
        if match is None:
            raise SkillMdError("expected 'key: value' (such as 'name: my-skill'); quote a value "
                               "that contains ': ' or starts with a special character",
                               line=line_no)
        key, raw = match.group(1), (match.group(2) or "").strip()
        if key in values:
            raise SkillMdError(f"'{key}' is given twice", line=line_no, key=key)
        # The indented lines that follow belong to this key.
        end = index + 1
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > 0):
            end += 1
        continuation = lines[index + 1:end]
        while continuation and not continuation[-1].strip():
            continuation.pop()
            end -= 1
        header = _BLOCK_HEADER.match(raw)
        if header:
            values[key] = _block(continuation, header.group(1), header.group(2))
        elif raw.startswith(('"', "'")):
            if continuation:
                raise SkillMdError(f"a quoted value of '{key}' must fit on one line; use "
                                   f"'{key}: >' and indented lines for longer text",
                                   line=line_no + 1, key=key)
            values[key] = _quoted(raw, line_no, key)
        elif not raw or raw.startswith("#"):
            values[key] = None  # a nested block (mapping or list), or empty
        else:
            if raw[0] in "[{&*!%@`" and key in READ_KEYS:
                raise SkillMdError(f"the value of '{key}' starts with '{raw[0]}'; put it in "
                                   "quotes", line=line_no, key=key)
            parts = [_strip_comment(raw)]
            parts.extend(_strip_comment(ln.strip()) for ln in continuation if ln.strip())
            values[key] = " ".join(p for p in parts if p)
        index = end
    return values


def parse_skill_md(text: str) -> SkillDocument:
    """Split a SKILL.md into front matter and instructions and check ``name`` and
    ``description`` when they are given. Raises SkillMdError (with line and key)."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if not lines or lines[0].rstrip() != FENCE:
        return SkillDocument(None, None, text.strip("\n").rstrip(), has_front_matter=False)
    close = next((i for i in range(1, len(lines)) if lines[i].rstrip() in (FENCE, "...")),
                 None)
    if close is None:
        raise SkillMdError("the front matter opened with '---' is never closed; end it with a "
                           "line holding only '---'", line=1)
    values = parse_front_matter(lines[1:close], first_line_no=2)
    name = _text_field(values, "name", lines[1:close])
    description = _text_field(values, "description", lines[1:close])
    if name is not None and not _NAME.match(name):
        raise SkillMdError(f"name '{name[:80]}' is not a valid skill name: use {NAME_RULE}",
                           line=_line_of(lines[1:close], "name"), key="name")
    if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
        raise SkillMdError(f"description has {len(description)} characters; the limit is "
                           f"{MAX_DESCRIPTION_CHARS}",
                           line=_line_of(lines[1:close], "description"), key="description")
    body = "\n".join(lines[close + 1:]).strip("\n").rstrip()
    return SkillDocument(name, description, body, has_front_matter=True)


def _line_of(lines: list[str], key: str) -> int | None:
    for index, line in enumerate(lines):
        if re.match(rf"^{re.escape(key)}[ \t]*:", line):
            return index + 2
    return None


def _text_field(values: dict[str, str | None], key: str, lines: list[str]) -> str | None:
    if key not in values:
        return None
    value = values[key]
    if value is None:
        raise SkillMdError(f"'{key}' needs a text value on its line (such as '{key}: ...')",
                           line=_line_of(lines, key), key=key)
    return value.strip()


_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9(][^\n]*$")


def _yaml_text(value: str) -> str:
    """``value`` as a front matter value the parser above (and YAML) reads back unchanged."""
    if _PLAIN_SAFE.match(value) and ": " not in value and " #" not in value \
            and value == value.strip() and not value.endswith(":"):
        return value
    return json.dumps(value, ensure_ascii=False)


def render_skill_md(name: str, description: str, instructions: str) -> str:
    """The SKILL.md text of a skill: front matter with name and description, then the
    instructions. ``parse_skill_md`` of the result gives the same three values back."""
    head = [FENCE, f"name: {name}"]
    if description:
        head.append(f"description: {_yaml_text(description)}")
    head.append(FENCE)
    return "\n".join(head) + "\n\n" + instructions.rstrip() + "\n"
