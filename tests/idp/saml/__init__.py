"""A real SAML identity provider for the tests: pysaml2's IdP server (``saml2.server.Server``),
configured here, signing with keys generated per test session (RSA-SHA256 via Debian's
``xmlsec1``). ``attacks.py`` derives crafted responses from the real signed ones."""
