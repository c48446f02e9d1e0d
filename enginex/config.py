"""Settings from the environment (``ENGINEX_*``): one object, read once per process."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class UnsafeConfigurationError(RuntimeError):
    """Raised at startup when the settings would be unsafe for the chosen deployment."""


class Settings(BaseSettings):
    """Every setting EngineX reads. See README.md, "Configuration", for the table."""

    model_config = SettingsConfigDict(env_prefix="ENGINEX_", extra="ignore")

    data_dir: Path = Field(default=Path(".enginex"))
    database_url: str = ""
    migration_database_url: str = ""
    master_key: str = ""
    base_url: str = "http://127.0.0.1:8000"
    cookie_secure: bool | None = None
    allow_dev_key: bool = False
    session_idle_minutes: int = 12 * 60
    session_absolute_hours: int = 7 * 24
    # How often an open event stream (SSE) re-checks its caller's access (session, API key,
    # membership, role); at most 15 s, so a revoked caller stops receiving within that bound.
    stream_recheck_seconds: float = Field(default=15.0, gt=0, le=15)
    # Connections of ONE process (API or worker): db_pool_size kept open plus up to
    # db_max_overflow more under load (default: as many as db_pool_size). Budget on
    # PostgreSQL (docs/SCALING.md): processes x (pool + overflow) + headroom <= max_connections.
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int | None = Field(default=None, ge=0)
    # What all EngineX processes together may open against this PostgreSQL (0: not stated);
    # start-up warns when it exceeds the server's max_connections.
    db_max_client_connections: int = Field(default=0, ge=0)
    # ENGINEX_DATABASE_URL points at PgBouncer in transaction pooling mode: psycopg's
    # server-side prepared statements are turned off (they do not survive a change of server
    # connection) and the connection budget is PgBouncer's, not checked at start-up.
    db_pgbouncer: bool = False
    max_body_bytes: int = 1_048_576
    max_upload_bytes: int = 6 * 1_048_576
    login_max_failures_per_account: int = 10
    login_max_failures_per_address: int = 50
    login_window_minutes: int = 15
    log_level: str = "INFO"
    # json: one JSON object per line (production); text: readable lines; auto: JSON unless
    # stderr is a terminal (enginex/kit/logs.py).
    log_format: Literal["auto", "json", "text"] = "auto"
    storage_dir: Path | None = None
    embedded_worker: bool = True
    worker_slots: int = 4
    tenant_concurrency: int = 4
    lease_seconds: int = 30
    # How often a worker refreshes its presence row; a worker silent for three of these is
    # dead and its runs are claimed again at once (enginex/runs/scheduler.py). The same value
    # for every worker of a deployment.
    worker_heartbeat_seconds: float = Field(default=2.0, gt=0, le=60)
    allow_private_network: bool = False
    mcp_stdio_user: str = "auto"
    # Connecting to an MCP server (a stdio process's start, then the MCP handshake) may take
    # this long even when the server's own timeout, which bounds each call, is shorter:
    # start-up depends on the host's load, not on the server's tools.
    mcp_start_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: comma-separated
    # addresses or networks (CIDR). Empty: those headers are ignored.
    trusted_proxies: str = ""
    # SAML sign-in (docs/SSO_SAML.md): clock difference tolerated with an IdP on NotBefore /
    # NotOnOrAfter, and the largest SAMLResponse accepted (decoded XML bytes).
    saml_clock_skew_seconds: int = Field(default=120, ge=0, le=600)
    saml_max_response_bytes: int = Field(default=262_144, ge=4096, le=1_048_576)
    # Tests only: cheap argon2id parameters instead of the OWASP ones (auth/passwords.py), so
    # the suite's thousands of password hashes cost microseconds. Refused on https:// below.
    argon2_test_profile: bool = False
    # Outgoing mail (docs/ACCOUNTS.md): smtp://[user:pass@]host[:port] or smtps://...; empty:
    # mail waits in the outbox for the platform admin (/admin/outbox, `enginex outbox list`).
    smtp_url: str = ""
    mail_from: str = "EngineX <enginex@localhost>"
    # A password-reset link works once, for this many minutes.
    password_reset_ttl_minutes: int = Field(default=30, ge=5, le=24 * 60)
    # Reset requests per email address and per client address in login_window_minutes.
    password_reset_max_per_email: int = Field(default=5, ge=1)
    password_reset_max_per_address: int = Field(default=30, ge=1)
    # Data life cycle (docs/DATA_LIFECYCLE.md): exports are kept this many days, a download
    # link lives this many minutes, an export job's lease this many seconds (a dead worker's
    # export is taken over after it), and an export reads at most this many rows per second
    # (0: no limit) so that a large tenant's export does not crowd the database.
    export_retention_days: int = Field(default=7, ge=1)
    export_link_minutes: int = Field(default=15, ge=1, le=24 * 60)
    export_lease_seconds: int = Field(default=60, ge=2)
    export_rows_per_second: int = Field(default=0, ge=0)
    # How often the worker looks for life-cycle jobs (exports, expiries).
    lifecycle_poll_seconds: float = Field(default=2.0, gt=0)
    # Deletion with a grace period (docs/DATA_LIFECYCLE.md "Deletion"): an organization
    # deleted by its admin or a platform admin is suspended at once and deleted for good this
    # many days later (0: at the next worker pass); the hard delete removes at most this many
    # rows per transaction and per second (0: no limit).
    deletion_grace_days: int = Field(default=30, ge=0, le=3650)
    deletion_batch_rows: int = Field(default=1000, ge=1, le=100_000)
    deletion_rows_per_second: int = Field(default=0, ge=0)
    # Retention (docs/DATA_LIFECYCLE.md "Retention"): the shortest audit retention an org
    # admin may choose, how often a worker applies the policies, and the rows per transaction.
    audit_retention_min_days: int = Field(default=365, ge=1, le=36500)
    retention_sweep_seconds: float = Field(default=3600.0, gt=0)
    retention_batch_rows: int = Field(default=2000, ge=1, le=100_000)
    # The largest archive ``enginex tenant import`` accepts (compressed and uncompressed).
    import_max_bytes: int = Field(default=10 * 1024**3, ge=1)
    # Usage and rate limits (docs/USAGE.md). Redis for the rate-limit counters (empty: the
    # database); per-minute API limits outside a tenant (per address for anonymous routes,
    # per user for signed-in routes without an organization); the bearer token of /metrics
    # (empty: /metrics is off).
    redis_url: str = ""
    rate_limit_anonymous_per_minute: int = Field(default=600, ge=1)
    rate_limit_user_per_minute: int = Field(default=1200, ge=1)
    metrics_token: str = ""
    # Stripe Billing Meters push (usage/stripe.py, docs/USAGE.md); off when the key is empty.
    stripe_api_key: str = ""
    stripe_api_base: str = "https://api.stripe.com"
    stripe_event_prefix: str = "enginex_"

    @property
    def trusted_proxy_list(self) -> list[str]:
        """The proxies as networks (``10.0.0.5/16`` -> ``10.0.0.0/16``, an address -> ``/32``
        or ``/128``): the middleware parses strictly and would ignore a host-bits form.
        Entries that are not addresses are kept as written; ``check_safe`` refuses them."""
        found = []
        for entry in (p.strip() for p in self.trusted_proxies.split(",")):
            if entry:
                try:
                    found.append(str(ipaddress.ip_network(entry, strict=False)))
                except ValueError:
                    found.append(entry)
        return found

    @property
    def resolved_database_url(self) -> str:
        """The application's database URL; the embedded SQLite file by default."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'enginex.db').resolve()}"

    @property
    def resolved_migration_url(self) -> str:
        """The URL migrations run with (the owner role on PostgreSQL)."""
        return self.migration_database_url or self.resolved_database_url

    @property
    def resolved_storage_dir(self) -> Path:
        return self.storage_dir or (self.data_dir / "storage")

    @property
    def is_postgres(self) -> bool:
        return self.resolved_database_url.startswith("postgresql")

    @property
    def secure_cookies(self) -> bool:
        """Secure + ``__Host-`` cookies whenever the deployment is served over HTTPS."""
        if self.cookie_secure is not None:
            return self.cookie_secure
        return self.base_url.startswith("https://")

    @property
    def session_cookie_name(self) -> str:
        return "__Host-enginex_session" if self.secure_cookies else "enginex_session"

    def check_safe(self) -> None:
        """Refuse settings that are fine for a laptop but unsafe for a shared deployment.

        Raises UnsafeConfigurationError with a message that says how to fix it.
        """
        if self.is_postgres and not self.master_key and not self.allow_dev_key:
            raise UnsafeConfigurationError(
                "ENGINEX_DATABASE_URL points at PostgreSQL but no ENGINEX_MASTER_KEY is set: "
                "the auto-generated development key file is only for the embedded SQLite "
                "default. Generate a key with `enginex keys generate` and set "
                "ENGINEX_MASTER_KEY (or set ENGINEX_ALLOW_DEV_KEY=true for a throwaway setup)."
            )
        for proxy in self.trusted_proxy_list:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise UnsafeConfigurationError(
                    f"ENGINEX_TRUSTED_PROXIES: '{proxy}' is not an IP address or network "
                    "(CIDR). List the addresses of your reverse proxies, e.g. "
                    "'10.0.0.5,10.1.0.0/16'; '*' is not accepted (anyone could then choose "
                    "the address that sign-in throttling counts)."
                ) from None
        if self.base_url.startswith("https://") and self.cookie_secure is False:
            raise UnsafeConfigurationError(
                "ENGINEX_BASE_URL is https:// but ENGINEX_COOKIE_SECURE=false: session cookies "
                "would travel without the Secure flag. Remove ENGINEX_COOKIE_SECURE."
            )
        if self.smtp_url and not self.smtp_url.startswith(("smtp://", "smtps://")):
            raise UnsafeConfigurationError(
                "ENGINEX_SMTP_URL must start with smtp:// or smtps:// (e.g. "
                "smtp://mail.example.com:587 or smtps://user:pass@mail.example.com:465); "
                "leave it empty to keep mail in the outbox for the platform admin."
            )
        if self.base_url.startswith("https://") and self.argon2_test_profile:
            raise UnsafeConfigurationError(
                "ENGINEX_ARGON2_TEST_PROFILE=true is for the test suite only: it stores "
                "passwords with weak argon2 parameters. Remove ENGINEX_ARGON2_TEST_PROFILE."
            )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
