"""Starts the real OpenID Provider (panva/oidc-provider, tests/idp/oidc/provider.mjs) with
node on 127.0.0.1 for the SSO tests.

``npm ci`` installs the pinned package (package-lock.json) once; scripts/test.sh does it too.
Without node/npm the tests that need the provider are skipped locally and FAIL under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from tests.conftest import IN_CI
from tests.factories import free_port, wait_for

HERE = Path(__file__).resolve().parent
_install_lock = threading.Lock()


def ensure_installed() -> None:
    """``npm ci`` in tests/idp/oidc when node_modules is missing (idempotent)."""
    with _install_lock:
        if (HERE / "node_modules" / "oidc-provider" / "package.json").exists():
            return
        if shutil.which("node") is None or shutil.which("npm") is None:
            message = "node and npm are needed for the OIDC provider of the SSO tests"
            if IN_CI:
                pytest.fail(f"{message} (mandatory in CI)")
            pytest.skip(message)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=HERE,
                       check=True, timeout=600)


def new_signing_key(kid: str) -> dict[str, Any]:
    """A fresh RS256 private JWK for the provider."""
    key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"})
    return dict(key.as_dict(private=True))


@dataclass
class OidcProvider:
    """One running provider. ``clients``: client_id -> {client_secret, redirect_uris};
    ``accounts``: login (the subject) -> claims."""

    clients: dict[str, dict[str, Any]]
    accounts: dict[str, dict[str, Any]]
    port: int = field(default_factory=free_port)
    keys: list[dict[str, Any]] = field(default_factory=lambda: [new_signing_key("key-1")])
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OidcProvider:
        ensure_installed()
        config = {"port": self.port, "accounts": self.accounts, "jwks": {"keys": self.keys},
                  "clients": [{"client_id": cid, **spec} for cid, spec in self.clients.items()]}
        env = {**os.environ, "OIDC_PROVIDER_CONFIG": json.dumps(config),
               "NODE_NO_WARNINGS": "1"}
        self.output = []
        self.process = subprocess.Popen(["node", str(HERE / "provider.mjs")], cwd=HERE, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        process = self.process

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.output.append(line.rstrip())

        threading.Thread(target=read, daemon=True).start()
        wait_for(lambda: any(line.startswith("READY ") for line in self.output)
                 or process.poll() is not None, what="the OIDC provider to start")
        if process.poll() is not None:
            raise RuntimeError("the OIDC provider exited: " + "\n".join(self.output))
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def rotate_keys(self) -> None:
        """Restart on the same port signing with a new key (a new kid): key rotation."""
        self.stop()
        self.keys = [new_signing_key(f"key-{len(self.output)}-{os.urandom(4).hex()}")]
        self.start()
