"""ENGINEX_TRUSTED_PROXIES: behind a reverse proxy, sign-in throttling counts the client's
address from X-Forwarded-For -- but only when the connection comes from a listed proxy, so
a client elsewhere cannot choose the address it is counted under."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from enginex.config import Settings, UnsafeConfigurationError
from tests.conftest import separate_deployment
from tests.factories import Server, client_from

LIMIT = 3


@pytest.fixture(scope="module")
def proxied(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A deployment that trusts the proxies 127.0.0.2-3 (written with host bits, as
    operators do: 127.0.0.3/31 means 127.0.0.2-127.0.0.3, so the untrusted peer below is
    127.0.0.4), with a low per-address limit."""
    with separate_deployment(backend, tmp_path_factory.mktemp(f"proxy-{backend}"),
                             trusted_proxies="127.0.0.3/31", embedded_worker=False,
                             login_max_failures_per_address=LIMIT) as deployment:
        yield deployment


def fail_sign_ins(server: Server, via: str, forwarded_for: str, times: int) -> list[int]:
    with client_from(server, via) as client:
        return [client.post("/api/v1/auth/login",
                            json={"email": f"nobody-{i}@example.org", "password": "wrong-guess"},
                            headers={"X-Forwarded-For": forwarded_for}).status_code
                for i in range(times)]


def test_a_trusted_proxy_forwards_the_client_address(proxied: Server) -> None:
    # Through the proxy: each forwarded client has its own count.
    assert fail_sign_ins(proxied, "127.0.0.2", "203.0.113.7", LIMIT) == [401] * LIMIT
    assert fail_sign_ins(proxied, "127.0.0.2", "203.0.113.7", 1) == [429]
    assert fail_sign_ins(proxied, "127.0.0.2", "203.0.113.8", 1) == [401]
    # A client that appends its own X-Forwarded-For before the proxy's: the proxy's entry
    # (rightmost untrusted) is what counts, not the forged one.
    assert fail_sign_ins(proxied, "127.0.0.2", "198.51.100.1, 203.0.113.7", 1) == [429]


def test_an_untrusted_peer_cannot_choose_its_address(proxied: Server) -> None:
    # Not from the proxy: the header is ignored, the connection's own address is counted.
    statuses = fail_sign_ins(proxied, "127.0.0.4", "203.0.113.99", LIMIT)
    assert statuses == [401] * LIMIT
    assert fail_sign_ins(proxied, "127.0.0.4", "203.0.113.100", 1) == [429]


@pytest.mark.parametrize("value", ["*", "10.0.0.0/33", "proxy.internal", "10.0.0.1, nope"])
def test_unusable_proxy_lists_are_refused_at_startup(value: str) -> None:
    with pytest.raises(UnsafeConfigurationError, match="ENGINEX_TRUSTED_PROXIES"):
        Settings(trusted_proxies=value).check_safe()


def test_no_proxy_is_trusted_by_default() -> None:
    assert Settings().trusted_proxy_list == []
    assert Settings(trusted_proxies=" 10.0.0.5 , 10.1.2.3/16,::1").trusted_proxy_list == [
        "10.0.0.5/32", "10.1.0.0/16", "::1/128"]
