"""The pysaml2 test IdP behind HTTP on 127.0.0.1, for browser tests.

* ``GET /idp/metadata``: the IdP's metadata;
* ``GET /idp/sso?SAMLRequest=...&RelayState=...`` (HTTP-Redirect binding): a sign-in page
  asking for a user name;
* ``POST /idp/login``: signs the response for that user and answers with pysaml2's own
  HTTP-POST binding page, which the browser submits to the SP's ACS by itself.
"""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field
from html import escape
from urllib.parse import parse_qs, urlencode, urlsplit

from saml2 import BINDING_HTTP_POST

from tests.idp.saml.idp import KeyPair, TestIdp


@dataclass(frozen=True)
class IdpUser:
    email: str
    display_name: str
    groups: list[str] = field(default_factory=list)


LOGIN_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Test IdP sign-in</title></head><body>
<h1>Test IdP</h1>
<form method="post" action="/idp/login">
<label for="username">Username</label> <input id="username" name="username">
<input type="hidden" name="SAMLRequest" value="{request}">
<input type="hidden" name="RelayState" value="{relay_state}">
<button type="submit">Sign in at the IdP</button>
</form></body></html>"""


class HttpIdp:
    """Bind first (the entity id holds the port), ``configure`` with the SP metadata, then
    ``start``; ``stop`` at the end."""

    def __init__(self, keys: KeyPair, users: dict[str, IdpUser]) -> None:
        self.keys = keys
        self.users = users
        self.idp: TestIdp | None = None
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._get(self)

            def do_POST(self) -> None:
                owner._post(self)

            def log_message(self, *args: object) -> None:
                return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/idp/metadata"

    def configure(self, sp_metadata: list[bytes]) -> None:
        self.idp = TestIdp(entity_id=self.metadata_url, sso_url=f"{self.base_url}/idp/sso",
                           keys=self.keys, sp_metadata=sp_metadata)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _send(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
              content_type: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _get(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        assert self.idp is not None
        parts = urlsplit(handler.path)
        if parts.path == "/idp/metadata":
            self._send(handler, 200, self.idp.metadata_xml(), "application/samlmetadata+xml")
        elif parts.path == "/idp/sso":
            query = parse_qs(parts.query)
            page = LOGIN_PAGE.format(request=escape(query["SAMLRequest"][0]),
                                     relay_state=escape(query.get("RelayState", [""])[0]))
            self._send(handler, 200, page.encode(), "text/html; charset=utf-8")
        else:
            self._send(handler, 404, b"not found", "text/plain")

    def _post(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        assert self.idp is not None
        length = int(handler.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(handler.rfile.read(length).decode()).items()}
        user = self.users.get(form.get("username", ""))
        if user is None:
            self._send(handler, 403, b"unknown user", "text/plain")
            return
        redirect = f"{self.idp.sso_url}?{urlencode({'SAMLRequest': form['SAMLRequest']})}"
        saml_response = self.idp.respond(
            redirect, name_id=form["username"],
            attributes={"email": [user.email], "displayName": [user.display_name],
                        "groups": user.groups})
        request = self.idp.server.parse_authn_request(form["SAMLRequest"])
        acs = request.message.assertion_consumer_service_url
        info = self.idp.server.apply_binding(BINDING_HTTP_POST, _decoded(saml_response), acs,
                                             relay_state=form.get("RelayState", ""),
                                             response=True)
        self._send(handler, 200, info["data"].encode(), "text/html; charset=utf-8")


def _decoded(saml_response: str) -> str:
    import base64

    return base64.b64decode(saml_response).decode()
