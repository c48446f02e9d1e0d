"""The credential vault: per-tenant envelope encryption, credentials, run-time use.

Where things are: ``crypto`` (formats, AES-256-GCM, no I/O), ``vault`` (the keyring: master
keys, data keys and their cache), ``service`` (credential CRUD), ``runtime`` (resolution for
run steps, redaction, OAuth2 refresh), ``rotation`` (key rotation, crypto-shredding), ``api``
and ``cli``. See docs/CREDENTIALS.md.
"""
