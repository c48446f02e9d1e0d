"""Errors, strict request bodies, size limits, security headers and the OpenAPI document.

Every 4xx/5xx is ``{"error": {"code", "message", "details"}}`` and says how to fix the
request; bad input never gets a 500 or a silently coerced value.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
from fastapi.routing import APIRoute

from enginex.kit.errors import NOT_FOUND_MESSAGE
from tests.conftest import _ServerThread
from tests.factories import Actor, Org, Server, anonymous, client_from, make_org

EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}


@pytest.fixture(scope="module")
def shop(server: Server, platform_admin: Actor) -> Org:
    return make_org(server, platform_admin, "err", roles=("admin",), with_keys=False)


@pytest.fixture(scope="module")
def failing_base_url(server: Server) -> Iterator[str]:
    """The real app on the same database, plus one route that fails with an unexpected error."""
    thread = _ServerThread(server.settings.model_copy(update={"embedded_worker": False}))

    async def fail() -> None:
        raise RuntimeError("internal-detail-that-must-not-leak")

    thread.app.add_api_route("/api/v1/test-failure", fail, methods=["GET"])
    thread.start()
    try:
        yield f"http://127.0.0.1:{thread.port}"
    finally:
        thread.stop()


def assert_error_shape(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    assert isinstance(error["details"], dict)
    return error


def field_errors(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    error = assert_error_shape(response)
    assert error["code"] == "validation_failed"
    return {e["field"]: e["message"] for e in error["details"]["errors"]}


def assert_security_headers(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    directives = {d.strip() for d in csp.split(";")}
    assert {"object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"} <= directives
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] in {"same-origin", "no-referrer",
                                                   "strict-origin-when-cross-origin"}
    assert response.headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in response.headers  # plain http here


def test_unknown_fields_are_rejected_by_name(server: Server, shop: Org) -> None:
    admin = shop.admin.client
    cases = [
        ("/api/v1/auth/login", {"email": "a@example.org", "password": "x" * 12,
                                "remember_me": True}, "remember_me"),
        (f"/api/v1/orgs/{shop.slug}/invitations", {"email": "a@example.org", "rol": "viewer"},
         "rol"),
        (f"/api/v1/orgs/{shop.slug}/api-keys", {"name": "k", "scopes": ["runs:write"]},
         "scopes"),
    ]
    for url, body, unknown in cases:
        with client_from(server) as anon:
            client = anon if "auth" in url else admin
            response = client.post(url, json=body)
        errors = field_errors(response)
        assert errors == {unknown: "unknown field; remove it"}, (url, errors)
        assert unknown in response.json()["error"]["message"]


@pytest.mark.parametrize("field,value", [("role", 1), ("role", "owner"), ("role", None),
                                         ("email", 5), ("email", ["a@example.org"]),
                                         ("email", "not-an-email")])
def test_invitation_fields_are_strict(server: Server, shop: Org, field: str,
                                      value: object) -> None:
    body = {"email": f"s-{secrets.token_hex(3)}@example.org", "role": "viewer", field: value}
    response = shop.admin.client.post(f"/api/v1/orgs/{shop.slug}/invitations", json=body)
    assert list(field_errors(response)) == [field]


@pytest.mark.parametrize("value", ["5", 5.0, True, 0, 3651, [5]])
def test_api_key_expiry_is_a_strict_integer(server: Server, shop: Org, value: object) -> None:
    response = shop.admin.client.post(f"/api/v1/orgs/{shop.slug}/api-keys",
                                      json={"name": "typed", "expires_in_days": value})
    assert list(field_errors(response)) == ["expires_in_days"]


def test_login_body_is_strict_and_not_coerced(server: Server) -> None:
    with client_from(server) as client:
        for body, field in [({"email": 5, "password": "x" * 12}, "email"),
                            ({"email": "a@example.org", "password": 123456789012}, "password"),
                            ({"email": "a@example.org"}, "password"),
                            ({"email": "a@example.org", "password": "p" * 129}, "password")]:
            response = client.post("/api/v1/auth/login", json=body)
            assert field in field_errors(response), body


@pytest.mark.parametrize("content,content_type", [
    (b'{"email": "a@example.org", "password": ', "application/json"),
    (b"{'email': 'single quotes'}", "application/json"),
    (b"\xff\xfe\x00garbage", "application/json"),
    (b"[1, 2, 3]", "application/json"),
    (b'"just a string"', "application/json"),
    (b"email=a@example.org&password=x", "application/x-www-form-urlencoded"),
    (b"email=a@example.org", "text/plain"),
    (b"", "application/json"),
])
def test_malformed_bodies_get_422_not_500(server: Server, content: bytes,
                                          content_type: str) -> None:
    with client_from(server) as client:
        response = client.post("/api/v1/auth/login", content=content,
                               headers={"content-type": content_type})
    assert response.status_code == 422, response.text
    error = assert_error_shape(response)
    assert error["code"] == "validation_failed"
    assert error["details"]["errors"], error


def test_malformed_json_message_points_at_the_problem(server: Server) -> None:
    with anonymous(server) as client:
        response = client.post("/api/v1/auth/login", content=b'{"email": ',
                               headers={"content-type": "application/json"})
    errors = field_errors(response)
    assert list(errors) == ["body"]
    assert "malformed JSON at character 10" in errors["body"]


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_oversized_bodies_get_413(server: Server, shop: Org) -> None:
    limit = server.settings.max_body_bytes
    url = f"/api/v1/orgs/{shop.slug}/invitations"
    for client in (anonymous(server), shop.admin.client):
        # Declared too large: refused before reading.
        declared = client.post(url, content=b" " * (limit + 1),
                               headers={"content-type": "application/json"})
        # Chunked, no Content-Length: refused while reading.
        chunked = client.post(url, content=_chunks(limit + 100_000),
                              headers={"content-type": "application/json"})
        assert "content-length" not in chunked.request.headers
        for response in (declared, chunked):
            assert response.status_code == 413, response.text
            error = assert_error_shape(response)
            assert error["code"] == "payload_too_large" and str(limit) in error["message"]
            assert_security_headers(response)
    # A body just under the limit is read and judged on its content (here: not JSON).
    fits = shop.admin.client.post(url, content=_chunks(limit - 10),
                                  headers={"content-type": "application/json"})
    assert fits.status_code == 422, fits.text
    # The server is fine afterwards.
    assert shop.admin.client.get(f"/api/v1/orgs/{shop.slug}/members").status_code == 200


def test_unknown_routes_and_methods_answer_json(server: Server, shop: Org) -> None:
    with anonymous(server) as client:
        for url in ("/api/v1/nope", "/api/v1/orgs", "/static/nope.js"):
            response = client.get(url)
            assert response.status_code == 404, url
            assert response.json() == EXPECTED_404
            assert_security_headers(response)
        # Outside the API, a person's browser gets the same message as an HTML page.
        page = client.get("/nope")
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert EXPECTED_404["error"]["message"] in page.text
        assert_security_headers(page)
        wrong = client.put("/api/v1/auth/login", json={})
        assert wrong.status_code == 405
        assert assert_error_shape(wrong)["code"] == "method_not_allowed"
        assert wrong.headers["allow"] == "POST"
        assert client.delete("/healthz").status_code == 405
    member_route = shop.admin.client.put(f"/api/v1/orgs/{shop.slug}/members")
    assert member_route.status_code == 405
    assert_error_shape(member_route)
    unknown_tenant_path = shop.admin.client.get(f"/api/v1/orgs/{shop.slug}/nothing-here")
    assert unknown_tenant_path.status_code == 404
    assert unknown_tenant_path.json() == EXPECTED_404


def test_bad_path_parameters_get_422(server: Server, shop: Org) -> None:
    response = shop.admin.client.delete(f"/api/v1/orgs/{shop.slug}/api-keys/not-a-uuid")
    assert list(field_errors(response)) == ["path.key_id"]
    response = shop.admin.client.patch(f"/api/v1/orgs/{shop.slug}/members/123",
                                       json={"role": "viewer"})
    assert "path.user_id" in field_errors(response)


def test_every_error_status_has_the_shape_and_headers(server: Server, shop: Org) -> None:
    """One of each 4xx the foundation produces, checked for shape and security headers."""
    admin = shop.admin.client
    with anonymous(server) as anon, client_from(server) as guesser:
        responses = [
            (401, anon.get("/api/v1/me")),
            (401, guesser.post("/api/v1/auth/login", json={
                "email": "nobody@example.org", "password": "wrong-password-x"})),
            (403, admin.get("/api/v1/admin/tenants")),
            (404, anon.get("/api/v1/does-not-exist")),
            (405, anon.patch("/api/v1/me")),
            (409, admin.delete(f"/api/v1/orgs/{shop.slug}/members/{shop.admin.user_id}")),
            (413, anon.post("/api/v1/auth/login",
                            content=b"x" * (server.settings.max_body_bytes + 1))),
            (422, admin.post(f"/api/v1/orgs/{shop.slug}/api-keys", json={"name": ""})),
        ]
    for status, response in responses:
        assert response.status_code == status, (status, response.text)
        assert_error_shape(response)
        assert_security_headers(response)
        assert "Traceback" not in response.text


def test_unexpected_errors_are_500_json_with_headers_and_no_details(
        failing_base_url: str) -> None:
    with httpx.Client(base_url=failing_base_url, timeout=30) as client:
        response = client.get("/api/v1/test-failure")
        assert response.status_code == 500
        error = assert_error_shape(response)
        assert error["code"] == "internal_error" and error["details"] == {}
        assert "internal-detail" not in response.text and "Traceback" not in response.text
        assert_security_headers(response)
        assert client.get("/healthz").status_code == 200  # the server carries on


def test_security_headers_on_pages_and_api(server: Server, shop: Org) -> None:
    with anonymous(server) as client:
        page = client.get("/login")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert_security_headers(page)
        assert page.headers["x-frame-options"] == "DENY"
        assert_security_headers(client.get("/healthz"))
    ok = shop.admin.client.get(f"/api/v1/orgs/{shop.slug}/members")
    assert ok.status_code == 200
    assert_security_headers(ok)
    assert_security_headers(shop.admin.client.get("/api/v1/me"))


def test_openapi_lists_the_routes_with_strict_bodies(server: Server) -> None:
    with anonymous(server) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    paths = spec["paths"]
    for path, method in [("/api/v1/auth/login", "post"), ("/api/v1/auth/logout", "post"),
                         ("/api/v1/me", "get"), ("/api/v1/me/password", "post"),
                         ("/api/v1/orgs/{org}/members", "get"),
                         ("/api/v1/orgs/{org}/members/{user_id}", "patch"),
                         ("/api/v1/orgs/{org}/members/{user_id}", "delete"),
                         ("/api/v1/orgs/{org}/invitations", "post"),
                         ("/api/v1/orgs/{org}/invitations/{invitation_id}", "delete"),
                         ("/api/v1/invitations/accept", "post"),
                         ("/api/v1/orgs/{org}/api-keys", "post"),
                         ("/api/v1/orgs/{org}/api-keys/{key_id}", "delete"),
                         ("/api/v1/admin/tenants", "get"), ("/api/v1/admin/tenants", "post"),
                         ("/api/v1/admin/tenants/{tenant_id}", "patch"),
                         ("/healthz", "get"), ("/readyz", "get")]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from OpenAPI"
    # Every API route the app serves is documented.
    for route in server.app.routes:
        if isinstance(route, APIRoute) and route.include_in_schema and \
                route.path.startswith("/api/"):
            for method in route.methods - {"HEAD", "OPTIONS"}:
                assert method.lower() in paths.get(route.path, {}), (method, route.path)
    schemas = spec["components"]["schemas"]
    for name in ("LoginRequest", "InvitationCreate", "ApiKeyCreate", "TenantCreate",
                 "MemberUpdate", "PasswordChange", "InvitationAccept", "TenantStatusUpdate"):
        assert schemas[name].get("additionalProperties") is False, name
    member_params = {p["name"] for p in paths["/api/v1/orgs/{org}/members"]["get"]["parameters"]}
    # The tenant comes from the path only; the query holds the page (limit, cursor), nothing more.
    assert member_params == {"org", "limit", "cursor"}
