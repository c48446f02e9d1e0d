"""The vault's formats and in-memory pieces, without a database: AES-256-GCM sealing bound to
(tenant, row, purpose, value version, data-key version), data-key wrapping, master key
fingerprints, the bounded data-key cache, and redaction (values, clipped text, log records).
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid

import pytest

from enginex.credentials.crypto import (
    Binding,
    DecryptionFailed,
    Kek,
    MasterKeyUnavailable,
    kek_id,
    new_dek,
    open_sealed,
    seal,
    sealed_key_version,
    unwrap_dek,
    wrap_dek,
)
from enginex.credentials.runtime import (
    _ACTIVE,
    REDACTED,
    Resolved,
    header_value,
    install_log_redaction,
    redact,
    variants,
)
from enginex.credentials.vault import Keyring
from enginex.kit.crypto import generate_master_key
from enginex.tools.base import ToolError


def master() -> bytes:
    return os.urandom(32)


def test_a_sealed_value_opens_only_where_it_was_sealed() -> None:
    tenant, other_tenant, row, other_row = (uuid.uuid4() for _ in range(4))
    dek = new_dek()
    home = Binding("credential", tenant, row, 3)
    blob = seal(dek, 7, home, b"s3cret-value")
    assert b"s3cret-value" not in blob and sealed_key_version(blob) == 7
    assert open_sealed(dek, home, blob) == b"s3cret-value"
    elsewhere = [Binding("credential", other_tenant, row, 3),
                 Binding("credential", tenant, other_row, 3),
                 Binding("credential", tenant, row, 2),  # an older value version
                 Binding("llm_settings.api_key", tenant, row, 3)]
    for binding in elsewhere:
        with pytest.raises(DecryptionFailed):
            open_sealed(dek, binding, blob)
    with pytest.raises(DecryptionFailed):
        open_sealed(new_dek(), home, blob)  # another tenant's data key
    for position in range(len(blob)):  # any altered byte, the key version in the header too
        altered = bytearray(blob)
        altered[position] ^= 0x01
        with pytest.raises(DecryptionFailed):
            open_sealed(dek, home, bytes(altered))


def test_swapping_ciphertexts_between_tenants_fails_every_time() -> None:
    rng = random.Random(4)
    tenants = [(uuid.uuid4(), new_dek()) for _ in range(6)]
    sealed = []
    for tenant, dek in tenants:
        for _ in range(5):
            binding = Binding("credential", tenant, uuid.uuid4(), rng.randint(1, 3))
            sealed.append((binding, dek, seal(dek, 1, binding, os.urandom(24))))
    attempts = 0
    for binding, dek, _blob in sealed:
        for other_binding, _other_dek, other_blob in sealed:
            if other_binding == binding:
                continue
            with pytest.raises(DecryptionFailed):
                open_sealed(dek, binding, other_blob)
            attempts += 1
    assert attempts == 30 * 29


def test_data_keys_unwrap_only_for_their_tenant_version_and_master_key() -> None:
    kek, other_kek = Kek.from_master(master()), Kek.from_master(master())
    tenant = uuid.uuid4()
    dek = new_dek()
    wrapped = wrap_dek(kek, tenant, 1, dek)
    assert dek not in wrapped and unwrap_dek(kek, tenant, 1, wrapped) == dek
    for args in ((other_kek, tenant, 1), (kek, uuid.uuid4(), 1), (kek, tenant, 2)):
        with pytest.raises(DecryptionFailed):
            unwrap_dek(args[0], args[1], args[2], wrapped)


def test_master_key_fingerprints_name_keys_without_revealing_them() -> None:
    key = master()
    assert kek_id(key) == kek_id(bytes(key)) and len(kek_id(key)) == 32
    assert kek_id(key) != kek_id(master())
    assert key.hex() not in kek_id(key)
    keyring = Keyring(key)
    with pytest.raises(MasterKeyUnavailable, match=kek_id(b"\x01" * 32)):
        keyring.kek(kek_id(b"\x01" * 32))


def test_the_data_key_cache_is_per_tenant_and_bounded_in_time_and_size() -> None:
    keyring = Keyring(master(), cache_seconds=0.2, cache_entries=3)
    tenants = [uuid.uuid4() for _ in range(4)]
    for tenant in tenants[:3]:
        keyring._remember(tenant, 1, b"k" * 32)
    assert keyring.cached_dek(tenants[0], 1) is not None
    assert keyring.cached_dek(tenants[0], 2) is None and keyring.cached_dek(tenants[3], 1) is None
    keyring._remember(tenants[3], 1, b"k" * 32)  # over the size bound: the oldest goes
    assert keyring.cached_dek(tenants[0], 1) is None
    assert keyring.cached_dek(tenants[1], 1) is not None
    keyring.forget_tenant(tenants[2])
    assert keyring.cached_dek(tenants[2], 1) is None
    time.sleep(0.25)
    assert keyring.cached_dek(tenants[3], 1) is None and keyring.cached_dek(tenants[1], 1) is None
    uncached = Keyring(master(), cache_seconds=0)
    uncached._remember(tenants[0], 1, b"k" * 32)
    assert uncached.cached_dek(tenants[0], 1) is None


def test_one_keyring_per_process_and_key_pair() -> None:
    key = master()
    assert Keyring.for_master(key, b"\x02" * 32) is Keyring.for_master(key, b"\x02" * 32)
    assert Keyring.for_master(key, b"\x02" * 32) is not Keyring.for_master(key, b"\x03" * 32)


def test_redaction_covers_encodings_nesting_and_clipped_text() -> None:
    secret = "tok/en+with&odd=chars\"42"
    forms = sorted(variants(secret), key=len, reverse=True)
    event = {"url": "https://x/?t=tok%2Fen%2Bwith%26odd%3Dchars%2242",
             "json": '{"t": "tok/en+with&odd=chars\\"42"}',
             "nested": [("a", secret)], secret: "as a key"}
    cleaned = redact(event, forms)
    assert secret not in repr(cleaned) and "tok%2Fen" not in repr(cleaned)
    assert cleaned["nested"] == [("a", REDACTED)] and cleaned[REDACTED] == "as a key"
    clipped = "x" * 10 + secret[:9] + "... [500 more characters]"
    assert redact(clipped, forms) == "x" * 10 + REDACTED + "... [500 more characters]"
    assert redact("short ab", sorted(variants("ab"), key=len)) == "short ab"  # too short


def test_log_records_made_while_a_step_holds_secrets_are_redacted(
        caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    secret = f"canary-log-{os.urandom(8).hex()}"
    _ACTIVE[-1] = (secret,)
    logger = logging.getLogger("enginex.test.vault")
    try:
        with caplog.at_level(logging.INFO, logger="enginex.test.vault"):
            logger.info("calling %s with %s", "https://x", secret)
            try:
                raise RuntimeError(f"boom {secret}")
            except RuntimeError:
                logger.exception("failed")
    finally:
        del _ACTIVE[-1]
    assert secret not in caplog.text and REDACTED in caplog.text
    with caplog.at_level(logging.INFO, logger="enginex.test.vault"):
        logger.info("after the step: %s", secret)  # nothing active: untouched
    assert secret in caplog.text


def test_header_values_by_type() -> None:
    key = Resolved("k", "api_key", {"key": "abc123"})
    assert header_value(key, "Authorization") == "Bearer abc123"
    assert header_value(key, "X-Api-Key") == "abc123"
    basic = Resolved("b", "basic_auth", {"username": "ann", "password": "pw:1"})
    assert header_value(basic, "Authorization") == "Basic YW5uOnB3OjE="
    custom = Resolved("c", "custom", {"x_api_key": "v1", "value": "v2"})
    assert header_value(custom, "X-Api-Key") == "v1"
    assert header_value(custom, "Authorization") == "v2"
    with pytest.raises(ToolError, match="no field 'x_other'"):
        header_value(Resolved("c", "custom", {"a": "b"}), "X-Other")
    assert generate_master_key()  # keys for the other vault tests come from here
