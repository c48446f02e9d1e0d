"""Allowed hosts of a credential: the patterns, their validation, and matching a destination.

A credential's ``allowed_hosts`` is a list of at most ``MAX_ALLOWED_HOSTS`` patterns:

* ``api.example.com``: exactly that host (a name, an IPv4 address or ``[IPv6]``);
* ``*.example.com``: any host under ``example.com`` (one or more labels), not ``example.com``
  itself; the wildcard is only ever the whole leftmost label, followed by at least two labels;
* either with ``:port``: only that port; without one, any port of the host.

Patterns are stored normalised: lowercase, IDNA (``bücher.de`` -> ``xn--bcher-kva.de``), no
trailing dot, IPv6 compressed in brackets, duplicates dropped. An empty list means the
credential may be sent to any host (the behaviour before allowed hosts existed).

Destinations are URLs; their host is normalised the same way (``httpx.URL``'s IDNA host), and
their port is the explicit one or the scheme's default. A URL that cannot be parsed matches
nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from enginex.credentials.models import Credential

MAX_ALLOWED_HOSTS = 20
MAX_PATTERN_CHARS = 300
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
HOW_TO_FIX = ("an organization admin can add the host to the credential's allowed hosts "
              "(Settings -> Credentials, or PATCH /api/v1/orgs/{org}/credentials/{id} with "
              "allowed_hosts)")


class HostPatternError(ValueError):
    """A pattern that is not a valid host pattern; the message says why and what to write."""


@dataclass(frozen=True)
class Destination:
    """Where a value is about to be sent: a normalised host and its port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _normal_host(raw: str) -> str:
    """A host name or address, normalised; HostPatternError if it is neither."""
    host = raw.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    host = host.lower().rstrip(".")
    if not host or len(host) > 253:
        raise HostPatternError("a host name has 1 to 253 characters")
    bad = next((label for label in host.split(".") if not _LABEL.match(label)), None)
    if bad is not None:
        raise HostPatternError("host names are letters, digits and '-' in dot-separated labels "
                               "of 1 to 63 characters")
    return host


def normalize_pattern(text: str) -> str:
    """``text`` as a stored pattern (see the module docstring). Raises HostPatternError."""
    pattern = text.strip()
    if not pattern:
        raise HostPatternError("empty; write a host such as api.example.com")
    if "://" in pattern or any(c in pattern for c in "/?#@\\ \t"):
        raise HostPatternError("write only the host (and an optional :port), without scheme, "
                               "user name, path or query: e.g. api.example.com or "
                               "*.example.com:8443")
    if pattern == "*":
        raise HostPatternError("'*' alone is not a pattern; leave the list empty to allow "
                               "every host")
    wildcard = pattern.startswith("*.")
    rest = pattern[2:] if wildcard else pattern
    if "*" in rest:
        raise HostPatternError("a wildcard may only be the whole leftmost label, as in "
                               "*.example.com")
    try:
        url = httpx.URL(f"http://{rest}/")
        raw_host = url.raw_host.decode("ascii")
        port = url.port
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise HostPatternError(f"not a host name or address ({exc})") from None
    if rest.endswith(":") or (port is not None and not 0 < port < 65536):
        raise HostPatternError("a port is a number from 1 to 65535")
    host = _normal_host(raw_host)
    if wildcard:
        if host.startswith("[") or _is_ipv4(host):
            raise HostPatternError("a wildcard needs a host name, not an IP address")
        if host.count(".") < 1:
            raise HostPatternError("a wildcard must be followed by at least two labels "
                                   "(*.example.com), never a top-level domain alone")
        host = f"*.{host}"
    return f"{host}:{port}" if port is not None else host


def _is_ipv4(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return False


def normalize_patterns(patterns: Sequence[str]) -> list[str]:
    """The normalised patterns in their order, duplicates dropped. Raises HostPatternError
    naming the offending entry (hosts are not secret)."""
    if len(patterns) > MAX_ALLOWED_HOSTS:
        raise HostPatternError(f"at most {MAX_ALLOWED_HOSTS} hosts ({len(patterns)} given); "
                               "use a wildcard such as *.example.com for many hosts of one "
                               "domain")
    normal: list[str] = []
    for entry in patterns:
        if not isinstance(entry, str):
            raise HostPatternError("each entry is a text such as api.example.com")
        shown = entry.strip()[:100]
        if len(entry) > MAX_PATTERN_CHARS:
            raise HostPatternError(f"'{shown}...' is longer than {MAX_PATTERN_CHARS} "
                                   "characters")
        try:
            pattern = normalize_pattern(entry)
        except HostPatternError as exc:
            raise HostPatternError(f"'{shown}': {exc}") from None
        if pattern not in normal:
            normal.append(pattern)
    return normal


def destination(url: str) -> Destination | None:
    """The host and port ``url`` (http or https) would be sent to, or None if it is not such
    a URL."""
    try:
        parsed = httpx.URL(url)
        raw_host = parsed.raw_host.decode("ascii")
        scheme = parsed.scheme
        port = parsed.port
    except (httpx.InvalidURL, UnicodeError, ValueError, TypeError):
        return None
    if scheme not in _DEFAULT_PORTS or not raw_host:
        return None
    try:
        host = _normal_host(raw_host)
    except HostPatternError:
        return None
    return Destination(host, port if port is not None else _DEFAULT_PORTS[scheme])


def _split(pattern: str) -> tuple[str, int | None]:
    """(host, port or None) of a stored pattern."""
    if pattern.startswith("["):
        end = pattern.index("]") + 1
        host, rest = pattern[:end], pattern[end:]
    else:
        host, sep, port = pattern.partition(":")
        rest = sep + port
    return host, (int(rest[1:]) if rest else None)


def _matches(pattern: str, target: Destination) -> bool:
    host, port = _split(pattern)
    if port is not None and port != target.port:
        return False
    if host.startswith("*."):
        return target.host.endswith(host[1:])
    return host == target.host


def allows(patterns: Sequence[str], url: str) -> bool:
    """Whether a credential with ``patterns`` may be sent to ``url``: always when the list is
    empty, else only when ``url`` is an http(s) URL whose host (and port) a pattern matches."""
    if not patterns:
        return True
    target = destination(url)
    return target is not None and any(_matches(p, target) for p in patterns)


def refusal_message(name: str, url: str | None) -> str:
    """Why a use of credential ``name`` towards ``url`` is refused, and how to fix it. Safe
    to show to a model and to store (names and hosts, never values)."""
    target = destination(url) if url else None
    if target is None:
        return (f"the credential '{name}' may only be sent to its allowed hosts, and this use "
                "has no http(s) URL whose host could be checked; use it as http_request's "
                "'credential' or in http_request arguments with a valid url")
    return (f"the credential '{name}' may not be sent to {target.host} (port {target.port}): "
            f"that host is not one of its allowed hosts. If it should be, {HOW_TO_FIX}")


def credential_allows(credential: Credential, url: str) -> bool:
    """``allows`` for a ``Credential`` row (its ``allowed_hosts``)."""
    return allows(list(credential.allowed_hosts or ()), url)
