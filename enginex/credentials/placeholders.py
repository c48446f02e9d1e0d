"""``{{credentials.NAME.FIELD}}`` placeholders: their syntax, and where ``http_request`` may
carry one.

A credential may be sent in an ``http_request``'s URL path, query or fragment, in a header
value, or in the body (``json``, ``body``) -- never in the URL's scheme or authority (user
info, host, port), nor in another argument (``credential``, ``credential_header``,
``method``, ...). The authority is where the value would be transformed before anyone could
redact it: the HTTP stack lower-cases and IDNA-encodes a host, DNS and the egress guard quote
it in their errors, and the allowed-hosts check compares it. A placeholder there is refused
when a package is uploaded (``template_placement_problem``, over the package's text, where
other placeholders are still unknown) and again before a step resolves anything
(``rendered_url_allows``, over the rendered URL).

This module has no I/O; ``agents/package.py`` and ``credentials/runtime.py`` both use it.
"""

from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"\{\{\s*credentials\.([a-z0-9][a-z0-9_-]*)\.([a-z][a-z0-9_]*)\s*\}\}")
HTTP_REQUEST = "http_request"
# http_request arguments where a placeholder may be anywhere ("headers": its values only).
FREE_ARGUMENTS = frozenset({"headers", "json", "body"})
URL_ARGUMENT = "url"
# Any other placeholder ({{ inputs.x }}), taken as unknown text: stricter than the template
# syntax (kit/templates.py), which leaves some braces literal.
_ANY_PLACEHOLDER = re.compile(r"\{\{.*?\}\}", re.DOTALL)
# A URL's scheme and authority, up to and including the character that ends the authority
# (the parse of httpx and RFC 3986: the authority is everything after '//' up to '/?#').
_SCHEME_AND_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*[/?#]")
RULE = ("a credential may only be sent in the URL's path or query (after "
        "'https://host/'), in a header value or in the body (json, body)")


def rendered_url_allows(prefix: str) -> bool:
    """Whether a placeholder may follow ``prefix``, the rendered start of a URL: only when
    ``prefix`` already holds the whole scheme and authority (``https://host:port/``)."""
    return _SCHEME_AND_AUTHORITY.match(prefix) is not None


def template_url_allows(prefix: str) -> bool:
    """Whether a placeholder may follow ``prefix``, the start of a URL template whose other
    placeholders (inputs, state) may render to anything. True when the template's own text
    already ends the authority, whatever they render to:

    * a ``?`` or ``#`` (neither a scheme nor an authority holds one);
    * a ``://`` followed later by a ``/`` (the authority starts at the latest at that
      ``://`` and ends at the latest at that ``/``);
    * a ``/`` right after a character other than ``:`` and ``/`` (so not one of the two
      slashes of ``scheme://``, which puts it after the authority's start).
    """
    literal = _ANY_PLACEHOLDER.sub("\x00", prefix)
    if "?" in literal or "#" in literal:
        return True
    scheme_end = literal.find("://")
    if scheme_end != -1 and "/" in literal[scheme_end + 3:]:
        return True
    return any(c == "/" and i > 0 and literal[i - 1] not in ":/\x00"
               for i, c in enumerate(literal))


def template_placement_problem(argument: str, template: str) -> str | None:
    """Why the credential placeholders in ``template``, the text of ``http_request``'s
    argument ``argument`` (a top-level name, or ``headers.<name>`` for a header's value), are
    not allowed there; None when they are (or there is none). Names the placeholder, never
    a value (a package holds none)."""
    match = PLACEHOLDER.search(template)
    if match is None:
        return None
    top = argument.split(".", 1)[0]
    if top in FREE_ARGUMENTS:
        return None
    if top == URL_ARGUMENT and template_url_allows(template[:match.start()]):
        return None
    return misplaced_message(match.group(0), argument)


def misplaced_message(placeholder: str, argument: str) -> str:
    """The error for a credential placeholder in the wrong place of an ``http_request`` call:
    names the placeholder and the argument, never a rendered value."""
    if argument == URL_ARGUMENT:
        where = "the scheme or host part of argument 'url' (scheme, user name, host or port)"
    else:
        where = f"argument '{argument}'"
    return f"the credential placeholder {placeholder} is in {where}; {RULE}"
