"""Drives a sign-in through the real provider with httpx, as a browser would (its login and
consent forms), stopping at the redirect back to EngineX so tests can deliver (or tamper
with) the response themselves."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

_FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"', re.IGNORECASE)


def _follow_until(client: httpx.Client, response: httpx.Response,
                  stop_prefix: str) -> httpx.Response | str:
    """Follow redirects; returns the URL once one points at ``stop_prefix`` (not fetched),
    or the first non-redirect response."""
    for _ in range(20):
        if not response.is_redirect:
            return response
        location = urljoin(str(response.url), response.headers["location"])
        if location.startswith(stop_prefix):
            return location
        response = client.get(location)
    raise AssertionError("too many redirects")


def idp_sign_in(client: httpx.Client, authorize_url: str, *, login: str,
                stop_prefix: str) -> str:
    """Sign ``login`` in at the provider (login form, then consent when asked) and return
    the URL the provider redirects the browser to (under ``stop_prefix``, not fetched)."""
    result = _follow_until(client, client.get(authorize_url), stop_prefix)
    for _ in range(4):
        if isinstance(result, str):
            return result
        assert result.status_code == 200, (result.status_code, result.text[:500])
        match = _FORM_ACTION.search(result.text)
        assert match, result.text[:500]
        action = urljoin(str(result.url), match.group(1).replace("&amp;", "&"))
        if 'name="login"' in result.text:
            data = {"prompt": "login", "login": login, "password": "any-password"}
        else:
            data = {"prompt": "consent"}
        result = _follow_until(client, client.post(action, data=data), stop_prefix)
    raise AssertionError("the provider kept asking")


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
