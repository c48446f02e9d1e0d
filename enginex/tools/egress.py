"""The egress guard: which network addresses tenant-controlled URLs may reach.

Tenants choose URLs (``http_request`` calls, LLM base URLs, later MCP servers). Unless the
deployment allows private networks, such a URL must not reach the platform's own network:
loopback, private (RFC 1918, fc00::/7), link-local (169.254/16 with the cloud metadata
endpoint 169.254.169.254, fe80::/10), CGNAT (100.64/10), multicast, unspecified, reserved and
documentation ranges, and IPv6 forms that embed such an IPv4 address (IPv4-mapped, NAT64,
6to4, Teredo) are refused. A deployment that sets ``allow_private``
(ENGINEX_ALLOW_PRIVATE_NETWORK, e.g. to reach a model server on its LAN) admits private and
loopback ranges, but cloud metadata endpoints, link-local, multicast and unspecified addresses
stay refused.

Two layers, both needed:

* ``check_url`` / ``check_url_async`` validate a URL before use (scheme, no credentials in the
  URL, every address the host resolves to) and give a clear message (``EgressRefused``; its
  ``reason`` says the same without the host, for a URL that carries a secret).
* ``guarded_transport`` (httpx) and ``guarded_sdk_transport`` (httpx2, used by the ``openai``
  and ``anthropic`` SDKs) re-check at connect time: the connection layer resolves the host
  once, refuses if ANY resolved address is refused, and opens the TCP connection to one of
  exactly those checked IP addresses. The Host header and the TLS SNI/certificate check still
  use the hostname of the URL (the HTTP layer above is unchanged). A DNS answer that changes
  between the check and the connection (DNS rebinding) therefore cannot reach a refused
  address, and neither can a redirect, because every connection passes through the guard.

Guarded clients ignore proxy environment variables (``trust_env=False``): a proxy would resolve
the target itself, outside the guard. A deployment that needs an egress proxy must enforce this
policy at the proxy and set ``allow_private``. Requests are not sent over Unix sockets.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import anyio
import httpx
import httpx2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_BENCHMARK = ipaddress.IPv4Network("198.18.0.0/15")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
# AWS/GCP/Azure (169.254.169.254), AWS IPv6 (fd00:ec2::254), Alibaba (100.100.100.200).
_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"),
                       ipaddress.ip_address("fd00:ec2::254"),
                       ipaddress.ip_address("100.100.100.200")})

REFUSAL_HINT = ("requests to private, loopback, link-local and other non-public addresses "
                "are refused by this deployment")
ALWAYS_REFUSED_HINT = ("cloud metadata, link-local, multicast and unspecified addresses are never "
                       "reachable")


class EgressRefused(Exception):
    """A URL or address the egress policy refuses. The message is safe to show and store; it
    may name the URL's host. ``reason`` says the same without the host or any part of the URL,
    for a caller whose URL carries a secret (a credential in its path or query)."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


def _always_refused(ip: IPAddress) -> str | None:
    """Addresses refused even when the deployment allows private networks: no tenant has a
    reason to reach the host's cloud metadata service or link-local peers."""
    if ip in _METADATA:
        return "cloud metadata endpoint"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    return None


def _refused(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip in _SITE_LOCAL:
        return "site-local"
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared address space (CGNAT)"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _BENCHMARK:
        return "benchmarking"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def refusal_reason(ip: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why ``ip`` may not be reached from tenant-controlled requests, or None if it may.

    ``allow_private`` admits private, loopback, CGNAT and other local ranges, but never the
    cloud metadata endpoints, link-local, multicast or unspecified addresses.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        embedded: ipaddress.IPv4Address | None = None
        kind = ""
        if ip.ipv4_mapped is not None:
            embedded, kind = ip.ipv4_mapped, "IPv4-mapped"
        elif ip in _NAT64:
            embedded, kind = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64-embedded"
        elif ip.sixtofour is not None:
            embedded, kind = ip.sixtofour, "6to4-embedded"
        if embedded is not None:
            inner = refusal_reason(embedded, allow_private=allow_private)
            return f"{kind} {inner}" if inner else None
        if not allow_private:
            if ip in _NAT64_LOCAL:
                return "local-use NAT64"
            if ip.teredo is not None:
                return "Teredo tunnel"
    reason = _always_refused(ip)
    if reason or allow_private:
        return reason
    return _refused(ip)


def _parse(url: str) -> tuple[str, int]:
    """(host, port) of an allowed URL; raises EgressRefused for the wrong shape."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise EgressRefused(f"not a valid URL: {exc}", reason="not a valid URL") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise EgressRefused(f"only http:// and https:// URLs are allowed, not "
                            f"'{parsed.scheme or 'no scheme'}'",
                            reason="only http:// and https:// URLs are allowed")
    if parsed.userinfo:
        raise EgressRefused("URLs may not contain a user name or password; use a credential")
    host = parsed.host
    if not host:
        raise EgressRefused("the URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return host, port


def _addresses(infos: Iterable[tuple[Any, ...]]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def check_addresses(host: str, addresses: list[IPAddress], *, allow_private: bool) -> None:
    """Raise EgressRefused if any of ``host``'s resolved addresses is refused."""
    if not addresses:
        raise EgressRefused(f"host '{host}' did not resolve to any address",
                            reason="the host did not resolve to any address")
    for address in addresses:
        reason = refusal_reason(address, allow_private=allow_private)
        if reason:
            shown = host if host == str(address) else f"{host} ({address})"
            hint = ALWAYS_REFUSED_HINT if allow_private else REFUSAL_HINT
            raise EgressRefused(f"{shown} is not a public address ({reason}); {hint}",
                                reason=f"the host is not a public address ({reason}); {hint}")


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse ``url`` unless it is http(s), carries no credentials and every address its host
    resolves to is allowed by ``refusal_reason``. Resolves DNS (blocking); async code should
    use ``check_url_async``. Raises EgressRefused."""
    host, port = _parse(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EgressRefused(f"cannot resolve host '{host}': {exc}",
                            reason="the host cannot be resolved") from None
    check_addresses(host, _addresses(infos), allow_private=allow_private)


async def check_url_async(url: str, *, allow_private: bool) -> None:
    """``check_url`` with non-blocking DNS resolution."""
    host, port = _parse(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EgressRefused(f"cannot resolve host '{host}': {exc}",
                            reason="the host cannot be resolved") from None
    check_addresses(host, _addresses(infos), allow_private=allow_private)


class GuardedNetworkBackend:
    """An httpcore/httpcore2 network backend that connects only to checked addresses.

    It wraps the pool's own backend: ``connect_tcp(host, ...)`` resolves ``host`` once, checks
    every address, then connects the inner backend to those IP
    addresses in turn. TLS is started later by the connection with the original hostname as
    SNI, so certificates are still verified against the hostname.
    """

    def __init__(self, inner: Any, *, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    # Signatures are httpcore's AsyncNetworkBackend interface (hence the timeout parameters).
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> Any:
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise EgressRefused(f"cannot resolve host '{host}': {exc}",
                                reason="the host cannot be resolved") from None
        addresses = _addresses(infos)
        check_addresses(host, addresses, allow_private=self._allow_private)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options)
            except Exception as exc:  # try the next address, like a resolver-aware connect
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[Any] | None = None) -> Any:
        raise EgressRefused("connections over Unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _install_guard(transport: Any, *, allow_private: bool) -> None:
    pool = getattr(transport, "_pool", None)
    if pool is None or not hasattr(pool, "_network_backend"):
        # Fail closed if a library upgrade changed the transport's internals.
        raise RuntimeError("cannot install the egress guard on this HTTP transport")
    pool._network_backend = GuardedNetworkBackend(pool._network_backend,
                                                  allow_private=allow_private)


# One TLS context per process and library: building one loads the CA bundle (~20 ms of CPU),
# and transports are created per step (LLM providers, http_request, MCP connections). An
# SSLContext is safe to share; these verify certificates and ignore SSL_CERT_* variables.
@functools.cache
def _tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context(trust_env=False)


@functools.cache
def _sdk_tls_context() -> ssl.SSLContext:
    return httpx2.create_ssl_context(trust_env=False)


def guarded_transport(*, allow_private: bool) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every TCP connection passes the egress guard."""
    transport = httpx.AsyncHTTPTransport(trust_env=False, verify=_tls_context())
    _install_guard(transport, allow_private=allow_private)
    return transport


def guarded_sdk_transport(*, allow_private: bool) -> httpx2.AsyncHTTPTransport:
    """The same for httpx2, the HTTP client of the ``openai`` and ``anthropic`` SDKs."""
    transport = httpx2.AsyncHTTPTransport(trust_env=False, verify=_sdk_tls_context())
    _install_guard(transport, allow_private=allow_private)
    return transport
