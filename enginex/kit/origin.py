"""Where a browser request came from, judged against ``ENGINEX_BASE_URL`` only.

The request's own ``Host`` header is never trusted as "this site": whoever sends the request
chooses it (a DNS-rebinding page, a proxy that forwards any host), so a check that accepted
``Origin == Host`` would accept an attacker's page that forged both.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of ``url`` (lower case, default port dropped); None when
    ``url`` is not an absolute http(s) URL (``Origin: null`` included)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, DEFAULT_PORTS[scheme]) \
        else f"{scheme}://{host}:{port}"


def site_origin(base_url: str) -> str:
    """The origin of the deployment's public address (``ENGINEX_BASE_URL``)."""
    return origin_of(base_url) or base_url.rstrip("/")


LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}


def is_this_site(url: str, base_url: str) -> bool:
    """True when ``url``'s origin is ``base_url``'s. For a loopback base URL (a developer's
    ``http://127.0.0.1:8000``) the other loopback names on the same scheme and port count too:
    only a page served by this very port can carry such an Origin."""
    origin, site = origin_of(url), site_origin(base_url)
    if origin is None:
        return False
    if origin == site:
        return True
    return _loopback_key(origin) is not None and _loopback_key(origin) == _loopback_key(site)


def _loopback_key(origin: str) -> tuple[str, int] | None:
    parts = urlsplit(origin)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    if host not in LOOPBACK_NAMES:
        return None
    return parts.scheme, parts.port or DEFAULT_PORTS[parts.scheme]


def origin_names_another_site(request: Request, base_url: str) -> bool:
    """True when the request carries an ``Origin`` header that is not ``base_url``'s origin
    (``null`` included). A request without the header is not judged here."""
    origin = request.headers.get("origin")
    return origin is not None and not is_this_site(origin, base_url)


def comes_from_this_site(request: Request, base_url: str) -> bool:
    """True only when the request proves it was sent by a page of this site: its ``Origin``
    header, or without one its ``Referer`` (which the dashboard's ``Referrer-Policy:
    same-origin`` keeps on same-site requests), names ``base_url``'s origin. A request with
    neither is not proven."""
    sender = request.headers.get("origin")
    if sender is None:
        sender = request.headers.get("referer")
    return sender is not None and is_this_site(sender, base_url)
