"""The OAuth2 refresh-token grant (RFC 6749, section 6) against a credential's token endpoint.

The request goes through the egress guard like every tenant-chosen URL. Client
authentication: HTTP Basic with client_id and client_secret when both are set
(``client_secret_basic``), otherwise ``client_id`` in the form. Error messages carry the
HTTP status and the RFC 6749 ``error`` code only, never a response body or a token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from enginex.tools.egress import EgressRefused, check_url_async, guarded_transport

TOKEN_TIMEOUT_SECONDS = 10.0
MAX_RESPONSE_BYTES = 64 * 1024
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,60}$")


class TokenRefreshFailed(Exception):
    """The token endpoint did not give a new access token; the message is safe to store."""


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    expires_in: int | None


async def refresh_tokens(token_url: str, *, refresh_token: str, client_id: str | None,
                         client_secret: str | None, scope: str | None,
                         allow_private_network: bool,
                         request_timeout: float = TOKEN_TIMEOUT_SECONDS) -> Tokens:
    """Exchange ``refresh_token`` for a new access token. Raises TokenRefreshFailed."""
    try:
        await check_url_async(token_url, allow_private=allow_private_network)
    except EgressRefused as exc:
        raise TokenRefreshFailed(f"the token endpoint is refused: {exc}") from None
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scope:
        form["scope"] = scope
    auth: httpx.BasicAuth | None = None
    if client_id and client_secret:
        auth = httpx.BasicAuth(client_id, client_secret)
    elif client_id:
        form["client_id"] = client_id
    try:
        async with httpx.AsyncClient(
                transport=guarded_transport(allow_private=allow_private_network),
                follow_redirects=False, trust_env=False,
                timeout=request_timeout) as client:
            async with client.stream("POST", token_url, data=form, auth=auth,
                                     headers={"Accept": "application/json"}) as response:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise TokenRefreshFailed("the token endpoint's answer is too large")
    except EgressRefused as exc:
        raise TokenRefreshFailed(f"the token endpoint is refused: {exc}") from None
    except httpx.HTTPError as exc:
        raise TokenRefreshFailed(f"the token endpoint could not be reached "
                                 f"({type(exc).__name__})") from None
    payload = _json_object(body)
    if response.status_code != 200:
        code = payload.get("error") if payload else None
        suffix = f" ({code})" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
        raise TokenRefreshFailed(f"the token endpoint answered HTTP {response.status_code}"
                                 f"{suffix}")
    access = payload.get("access_token") if payload else None
    if not isinstance(access, str) or not access or len(access) > 8192:
        raise TokenRefreshFailed("the token endpoint's answer has no access_token")
    refresh = payload.get("refresh_token")
    expires = payload.get("expires_in")
    if isinstance(expires, str) and expires.isdigit():
        expires = int(expires)
    return Tokens(access_token=access,
                  refresh_token=refresh if isinstance(refresh, str) and refresh else None,
                  expires_in=int(expires) if isinstance(expires, int | float)
                  and not isinstance(expires, bool) and expires > 0 else None)


def _json_object(body: bytes) -> dict[str, object] | None:
    import json

    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
