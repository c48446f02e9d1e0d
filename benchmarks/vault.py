"""Decrypt-for-use latency of the credential vault, with and without the data-key cache,
beside a raw AES-256-GCM decrypt measured in the same run (issue 4, item 9).

    .venv/bin/python benchmarks/vault.py [--iterations 2000] [--uses 300]

It builds a throwaway embedded (SQLite) deployment in a temporary directory: migrations, one
organization, one api_key credential sealed under the organization's data key. Then, in one
process, it measures (median and p99, microseconds):

* ``raw AES-GCM decrypt``: ``AESGCM.decrypt`` of a value of the same size, nothing else;
* ``open, DEK cached``: ``Keyring.open`` inside an open transaction, the unwrapped data key in
  the keyring's cache (what a run step pays after the first use in this process);
* ``open, DEK not cached``: the same with the cache disabled: each call reads the wrapped
  data key (one query) and unwraps it with the master key first;
* ``use(), DEK cached`` / ``use(), DEK not cached``: ``CredentialRuntime.use``, the whole
  decrypt-for-use of a run step: its own transaction, the lookup by name, the decrypt, the
  audit entry (``credential.used``) and the commit.

Benchmarks are not tests: this exits non-zero only when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1e6, p99 * 1e6


async def _time(n: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def run(iterations: int, uses: int) -> list[tuple[str, float, float]]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from sqlalchemy import select

    from enginex.config import Settings
    from enginex.credentials.models import Credential
    from enginex.credentials.runtime import CredentialRuntime
    from enginex.credentials.service import binding, create_credential
    from enginex.credentials.vault import Keyring
    from enginex.db import Database, set_tenant
    from enginex.kit.crypto import generate_master_key, load_master_key
    from enginex.migrate import upgrade
    from enginex.orgs.service import create_organization

    results: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), master_key=generate_master_key(),
                            log_level="WARNING")
        upgrade(settings)
        master = load_master_key(settings)
        db = Database(settings)
        try:
            cached, uncached = Keyring(master), Keyring(master, cache_seconds=0)
            async with db.sessions() as session:
                org, ctx = await create_organization(session, slug="bench", name="Bench")
                await create_credential(session, ctx, name="api", kind="api_key",
                                        values={"key": "sk-" + "x" * 48}, keyring=cached,
                                        actor=None)
                await session.commit()
            async with db.sessions() as session:
                await set_tenant(session, org.id)
                credential = (await session.execute(select(Credential))).scalar_one()
                bound, blob = binding(credential), credential.ciphertext
                key, nonce = os.urandom(32), os.urandom(12)
                aead = AESGCM(key)
                sealed = aead.encrypt(nonce, b'{"key":"' + b"x" * 51 + b'"}', b"ad")

                async def raw() -> object:
                    return aead.decrypt(nonce, sealed, b"ad")

                results.append(("raw AES-GCM decrypt", *_stats(await _time(iterations, raw))))
                for label, ring in (("open, DEK cached", cached),
                                    ("open, DEK not cached", uncached)):
                    await ring.open(session, bound, blob)  # warm up
                    results.append((label, *_stats(await _time(
                        iterations, lambda ring=ring: ring.open(session, bound, blob)))))
            for label, ring in (("use(), DEK cached", cached),
                                ("use(), DEK not cached", uncached)):
                runtime = CredentialRuntime(db.sessions, ring)
                run_id = uuid.uuid4()
                await runtime.use(ctx, run_id, "bench", "api")
                results.append((label, *_stats(await _time(
                    uses, lambda runtime=runtime, run_id=run_id: runtime.use(
                        ctx, run_id, "bench", "api")))))
        finally:
            await db.dispose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--uses", type=int, default=300)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.iterations, args.uses))
    print(f"\n  {'decrypt-for-use (SQLite)':<28} {'median us':>10} {'p99 us':>10}")
    for label, median, p99 in results:
        print(f"  {label:<28} {median:>10.1f} {p99:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
