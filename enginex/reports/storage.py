"""Tenant-prefixed artifact storage on the local filesystem.

Paths are built only here, only from server-generated ids: ``<root>/<tenant hex>/artifacts/
<artifact hex>``. A name from a package or a user never becomes part of a path, and every
resolved path is checked to stay under its tenant's prefix.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


class StorageEscape(RuntimeError):
    pass


class ArtifactStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def tenant_prefix(self, tenant_id: uuid.UUID) -> Path:
        return self.root / tenant_id.hex

    def path_for(self, tenant_id: uuid.UUID, artifact_id: uuid.UUID) -> Path:
        prefix = self.tenant_prefix(tenant_id)
        path = (prefix / "artifacts" / artifact_id.hex).resolve()
        if not path.is_relative_to(prefix):
            raise StorageEscape("artifact path escapes the tenant prefix")
        return path

    def write(self, tenant_id: uuid.UUID, artifact_id: uuid.UUID, data: bytes) -> Path:
        """Write atomically (temp file + rename), so a crash never leaves half a file."""
        path = self.path_for(tenant_id, artifact_id)
        self.root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the data dir
        for folder in (self.root, self.tenant_prefix(tenant_id), path.parent):
            folder.mkdir(mode=0o700, exist_ok=True)  # every level private, not just the last
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return path

    def read(self, tenant_id: uuid.UUID, artifact_id: uuid.UUID) -> bytes:
        return self.path_for(tenant_id, artifact_id).read_bytes()

    def delete_tenant(self, tenant_id: uuid.UUID) -> None:
        import shutil

        shutil.rmtree(self.tenant_prefix(tenant_id), ignore_errors=True)
