"""The hash chain of an organization's audit log: canonical form, hashing, verification.

``hash = SHA-256(prev_hash || canonical)`` where ``prev_hash`` is the previous entry's hash as
64 lowercase hex characters (``GENESIS`` for seq 1) and ``canonical`` is the UTF-8 JSON of
(tenant_id, seq, at, actor_kind, actor_id, action, target_kind, target_id, details) with
sorted keys, no whitespace, and ``at`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``. The entry id is not
covered: it is the row's storage key, not part of what happened.

Pure functions only (no database), so an exported JSON Lines file can be checked with the same
code as the database (``verify``).

Imported chains (docs/DATA_LIFECYCLE.md): an organization rebuilt from an export keeps the
exported entries verbatim, hashes included, and records the import as the next entry, action
``org.imported``, whose details name ``origin_tenant_id``, the organization id the earlier
entries were hashed under. When the import had to give the organization a new id, the entries
before that ``org.imported`` entry are verified with the origin id (``ChainWalker(origins=)``);
an archive of such a chain writes that id with each entry as ``chain_tenant_id``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64


def normalise_details(details: dict[str, Any] | None) -> dict[str, Any]:
    """``details`` as the JSON column will give it back (string keys, lists for tuples), so
    the hash computed on append is the hash recomputed after a read."""
    result: dict[str, Any] = json.loads(json.dumps(details or {}, default=str))
    return result


def format_at(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(*, tenant_id: str, seq: int, at: datetime, actor_kind: str,
              actor_id: str | None, action: str, target_kind: str, target_id: str,
              details: dict[str, Any]) -> bytes:
    body = {"tenant_id": tenant_id, "seq": seq, "at": format_at(at), "actor_kind": actor_kind,
            "actor_id": actor_id, "action": action, "target_kind": target_kind,
            "target_id": target_id, "details": details}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def entry_hash(prev_hash: str, canonical_bytes: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_bytes).hexdigest()


IMPORTED_ACTION = "org.imported"


def hash_of(entry: Any, prev_hash: str, tenant_id: str | None = None) -> str:
    """The hash ``entry`` (an AuditEntry or anything with its attributes) must carry;
    ``tenant_id``: the organization id it was hashed under, when not its own (imports)."""
    return entry_hash(prev_hash, canonical(
        tenant_id=tenant_id or str(entry.tenant_id), seq=entry.seq, at=entry.at,
        actor_kind=entry.actor_kind,
        actor_id=str(entry.actor_id) if entry.actor_id is not None else None,
        action=entry.action, target_kind=entry.target_kind, target_id=entry.target_id,
        details=entry.details or {}))


@dataclass(frozen=True)
class Verdict:
    """The result of a verification: ``broken_seq`` is None when the chain is intact."""

    entries: int
    broken_seq: int | None = None
    reason: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_seq is None

    def describe(self) -> str:
        if self.intact:
            return f"chain intact: {self.entries} entries"
        return f"chain broken at seq {self.broken_seq}: {self.reason}"


Origins = list[tuple[int, str]]


def origins_of(imports: Iterable[tuple[int, dict[str, Any]]]) -> Origins:
    """From the ``org.imported`` entries as (seq, details), ascending: [(seq, origin tenant
    id)], each meaning "entries before seq, after the previous import, were hashed under this
    id"."""
    return [(seq, str(details.get("origin_tenant_id", ""))) for seq, details in imports]


def chain_tenant(origins: Origins, seq: int) -> str | None:
    """The tenant id entry ``seq`` was hashed under, None for the entry's own."""
    for import_seq, origin in origins:
        if seq < import_seq:
            return origin
    return None


class ChainWalker:
    """Checks entries fed in ascending ``seq`` order; stops at the first broken link.
    ``origins``: see ``origins_of`` (an organization rebuilt by an import)."""

    def __init__(self, origins: Origins | None = None) -> None:
        self.origins = origins or []
        self.count = 0
        self.expected_seq = 1
        self.prev_hash = GENESIS
        self.verdict: Verdict | None = None

    def feed(self, entry: Any) -> bool:
        """Check one entry; False once the chain is broken (``verdict`` says where)."""
        if self.verdict is not None:
            return False
        if entry.seq != self.expected_seq:
            problem = ("entry is missing (deleted, or the rows were renumbered)"
                       if entry.seq > self.expected_seq else "sequence number repeats")
            return self._broken(self.expected_seq, problem)
        if entry.prev_hash != self.prev_hash:
            return self._broken(entry.seq, "prev_hash does not match the previous entry's hash "
                                           "(entries reordered, removed or replaced)")
        if hash_of(entry, entry.prev_hash, chain_tenant(self.origins, entry.seq)) != entry.hash:
            return self._broken(entry.seq, "the entry's content does not match its hash "
                                           "(the entry was changed)")
        self.count += 1
        self.expected_seq += 1
        self.prev_hash = entry.hash
        return True

    def _broken(self, seq: int, reason: str) -> bool:
        self.verdict = Verdict(self.count, seq, reason)
        return False

    def finish(self, head_seq: int | None = None, head_hash: str | None = None) -> Verdict:
        """The verdict; with the organization's head, a truncated tail is detected too."""
        if self.verdict is not None:
            return self.verdict
        last_seq = self.expected_seq - 1
        if head_seq is not None and head_seq != last_seq:
            if head_seq > last_seq:
                return Verdict(self.count, last_seq + 1,
                               f"entry is missing: the chain head records {head_seq} entries")
            return Verdict(self.count, head_seq + 1, "entries beyond the recorded chain head")
        if head_hash is not None and last_seq and head_hash != self.prev_hash:
            return Verdict(self.count, last_seq, "the last entry does not match the chain head")
        return Verdict(self.count)


def verify(entries: Iterable[Any], *, head_seq: int | None = None,
           head_hash: str | None = None) -> Verdict:
    walker = ChainWalker()
    for entry in entries:
        if not walker.feed(entry):
            break
    return walker.finish(head_seq, head_hash)
