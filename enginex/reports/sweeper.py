"""Remove report files that no ``artifacts`` row refers to (orphans).

Why they exist: ``runs/engine.py`` ``_store_report`` writes a report's bytes under the tenant's
prefix before the step's guarded commit inserts its row. When the lease is lost or the process
dies in between, the step is discarded (and run again under a new artifact id) and the file
stays behind: unreachable through the API, but tenant content left on disk.

Contract of ``sweep_orphans``:

* It looks only at ``<root>/<tenant hex>/artifacts/<artifact hex>`` (the layout of
  ``storage.py``), where both hex parts are the canonical form of a UUID (32 lowercase hex
  digits), and at ``<artifact hex>.tmp``, the name ``storage.py`` writes through before its
  rename (left behind only by a write interrupted by a crash; no row ever names it). Any other
  name, and any directory, symbolic link, socket or device, is left alone.
* Symbolic links are never followed: each directory is opened with ``O_NOFOLLOW`` relative to
  its parent's descriptor, files are judged by ``lstat`` and unlinked relative to their
  directory's descriptor, so a link swapped in during a sweep cannot redirect it.
* A file is removed only if its modification time is older than ``older_than`` (checked when
  listed and again just before the unlink) and, for an artifact name, no ``artifacts`` row with
  that id exists in THAT tenant (a session bound with ``set_tenant``, read through
  ``ArtifactRepository.existing_ids``). Another tenant's row with the same id saves nothing:
  a row's file is always under its own tenant's prefix.
* The directory of an organization that no longer exists is left untouched and logged as a
  warning. ``delete_tenant`` removes the prefix itself after its commit, so such a directory
  means a crash in that window, or a storage directory that does not belong to this database
  (a restore, a mount shared by mistake), in which case deleting would destroy another
  deployment's reports. Check, then remove it by hand.
* Idempotent, and safe to run from several workers at once (a file already gone is skipped).
  ``older_than`` must exceed the time between a report's write and its step's commit (well
  under a lease); the default, one hour, is far above it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from enginex.db import READ_ONLY, set_tenant
from enginex.orgs.repository import get_org
from enginex.reports.repository import ArtifactRepository
from enginex.reports.storage import ArtifactStorage
from enginex.tenancy.context import system_context

log = logging.getLogger("enginex.reports.sweeper")

DEFAULT_OLDER_THAN = timedelta(hours=1)
ARTIFACTS_DIR = "artifacts"
TMP_SUFFIX = ".tmp"
_HEX_DIGITS = frozenset("0123456789abcdef")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def canonical_id(name: str) -> uuid.UUID | None:
    """The UUID whose ``.hex`` is exactly ``name``, else None (upper case, dashes, other
    lengths and anything else are not names the storage writes)."""
    if len(name) != 32 or not set(name) <= _HEX_DIGITS:
        return None
    return uuid.UUID(hex=name)


@dataclass
class _OldFiles:
    """Well-formed regular files of one tenant older than the cut-off."""

    artifacts: dict[uuid.UUID, str] = field(default_factory=dict)  # id -> file name
    temporary: list[str] = field(default_factory=list)  # interrupted writes: always orphans


def _open_dir(name: str, dir_fd: int | None) -> int | None:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:  # gone, not a directory, or a symbolic link (ELOOP)
        return None


@contextmanager
def _artifacts_dir(root: Path, tenant_id: uuid.UUID) -> Iterator[int | None]:
    """A descriptor of ``<root>/<tenant hex>/artifacts``, each level opened without following
    a symbolic link; None if any level is missing or not a real directory."""
    opened: list[int] = []
    try:
        fd = _open_dir(str(root), None)
        for name in (tenant_id.hex, ARTIFACTS_DIR):
            if fd is None:
                break
            opened.append(fd)
            fd = _open_dir(name, fd)
        if fd is not None:
            opened.append(fd)
        yield fd
    finally:
        for fd in opened:
            os.close(fd)


def _is_old_file(st: os.stat_result, cutoff: float) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff


def _tenant_dirs(root: Path) -> list[uuid.UUID]:
    fd = _open_dir(str(root), None)
    if fd is None:
        return []
    try:
        with os.scandir(fd) as entries:
            names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    finally:
        os.close(fd)
    return sorted(tid for tid in map(canonical_id, names) if tid is not None)


def _old_files(root: Path, tenant_id: uuid.UUID, cutoff: float) -> _OldFiles:
    found = _OldFiles()
    with _artifacts_dir(root, tenant_id) as fd:
        if fd is None:
            return found
        with os.scandir(fd) as entries:
            for entry in entries:
                name = entry.name
                temporary = name.endswith(TMP_SUFFIX)
                artifact_id = canonical_id(name[:-len(TMP_SUFFIX)] if temporary else name)
                if artifact_id is None:
                    continue
                try:
                    if not _is_old_file(entry.stat(follow_symlinks=False), cutoff):
                        continue
                except FileNotFoundError:
                    continue
                if temporary:
                    found.temporary.append(name)
                else:
                    found.artifacts[artifact_id] = name
    return found


def _remove(root: Path, tenant_id: uuid.UUID, names: list[str], cutoff: float) -> int:
    removed = 0
    with _artifacts_dir(root, tenant_id) as fd:
        if fd is None:
            return 0
        for name in names:
            try:
                # Again just before the unlink: still a regular file, still old.
                if not _is_old_file(os.stat(name, dir_fd=fd, follow_symlinks=False), cutoff):
                    continue
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:  # another worker's sweep was first
                continue
            except OSError:
                log.warning("could not remove orphaned report file %s of tenant %s", name,
                            tenant_id, exc_info=True)
                continue
            removed += 1
    return removed


async def _unreferenced(sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID,
                        found: _OldFiles) -> list[str] | None:
    """Names among ``found`` without an ``artifacts`` row of ``tenant_id``; None if the
    organization no longer exists."""
    async with sessions(execution_options={READ_ONLY: True}) as db:
        org = await get_org(db, tenant_id)
        if org is None:
            return None
        await set_tenant(db, org.id)
        repo = ArtifactRepository(db, system_context(org.id, org.slug))
        referenced = await repo.existing_ids(found.artifacts)
    return found.temporary + [name for artifact_id, name in found.artifacts.items()
                              if artifact_id not in referenced]


async def sweep_orphans(sessions: async_sessionmaker[AsyncSession], storage: ArtifactStorage,
                        *, older_than: timedelta = DEFAULT_OLDER_THAN) -> int:
    """Remove orphaned report files older than ``older_than`` (see the module docstring for
    exactly which files); returns how many were removed. Raises ValueError if ``older_than``
    is not positive. Database errors propagate (nothing of that tenant is removed then)."""
    if older_than <= timedelta(0):
        raise ValueError("older_than must be positive: a younger file may belong to a step "
                         "that has not committed yet")
    cutoff = time.time() - older_than.total_seconds()
    removed = 0
    for tenant_id in await asyncio.to_thread(_tenant_dirs, storage.root):
        found = await asyncio.to_thread(_old_files, storage.root, tenant_id, cutoff)
        if not found.artifacts and not found.temporary:
            continue
        doomed = await _unreferenced(sessions, tenant_id, found)
        if doomed is None:
            log.warning("storage directory %s belongs to no organization of this database; "
                        "left untouched (remove it by hand if that organization was deleted)",
                        storage.tenant_prefix(tenant_id))
            continue
        count = await asyncio.to_thread(_remove, storage.root, tenant_id, doomed, cutoff)
        if count:
            log.info("removed %d orphaned report file(s) of tenant %s", count, tenant_id)
        removed += count
    return removed
