"""Settings: defaults, what they resolve to, and the unsafe combinations startup refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enginex.app import create_app
from enginex.config import Settings, UnsafeConfigurationError, get_settings
from enginex.kit.crypto import generate_master_key

PG_URL = "postgresql+psycopg://enginex_app@db.internal:5432/enginex"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read ENGINEX_* from the environment; start each test without any."""
    for name in [k for k in os.environ if k.startswith("ENGINEX_")]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()


def test_defaults_are_the_embedded_development_setup() -> None:
    settings = Settings()
    assert settings.data_dir == Path(".enginex")
    assert settings.resolved_database_url == (
        f"sqlite+aiosqlite:///{(Path('.enginex') / 'enginex.db').resolve()}")
    assert settings.resolved_migration_url == settings.resolved_database_url
    assert not settings.is_postgres
    assert settings.master_key == ""
    assert settings.base_url == "http://127.0.0.1:8000"
    assert (settings.secure_cookies, settings.session_cookie_name) == (False,
                                                                       "enginex_session")
    assert (settings.session_idle_minutes, settings.session_absolute_hours) == (720, 168)
    assert settings.max_body_bytes == 1_048_576
    assert settings.allow_dev_key is False
    settings.check_safe()  # the laptop default is allowed


def test_settings_come_from_enginex_environment_variables(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = generate_master_key()
    monkeypatch.setenv("ENGINEX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ENGINEX_DATABASE_URL", PG_URL)
    monkeypatch.setenv("ENGINEX_MIGRATION_DATABASE_URL", PG_URL.replace("app", "owner"))
    monkeypatch.setenv("ENGINEX_MASTER_KEY", key)
    monkeypatch.setenv("ENGINEX_SESSION_IDLE_MINUTES", "30")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///not-ours.db")  # no prefix: ignored
    settings = get_settings()
    assert get_settings() is settings  # read once per process
    assert settings.data_dir == tmp_path
    assert settings.is_postgres and settings.resolved_database_url == PG_URL
    assert settings.resolved_migration_url == PG_URL.replace("app", "owner")
    assert (settings.master_key, settings.session_idle_minutes) == (key, 30)
    settings.check_safe()
    get_settings.cache_clear()


@pytest.mark.parametrize(("base_url", "cookie_secure", "secure", "name"), [
    ("https://app.enginex.example", None, True, "__Host-enginex_session"),
    ("http://127.0.0.1:8000", None, False, "enginex_session"),
    ("http://enginex.internal", True, True, "__Host-enginex_session"),  # TLS at a proxy
])
def test_cookies_are_secure_with_the_host_prefix_over_https(
        base_url: str, cookie_secure: bool | None, secure: bool, name: str) -> None:
    settings = Settings(base_url=base_url, cookie_secure=cookie_secure)
    assert (settings.secure_cookies, settings.session_cookie_name) == (secure, name)


@pytest.mark.parametrize(("overrides", "fix"), [
    ({"database_url": PG_URL}, "ENGINEX_MASTER_KEY"),
    ({"database_url": PG_URL, "data_dir": "HAS_KEY_FILE"}, "ENGINEX_MASTER_KEY"),
    ({"base_url": "https://app.enginex.example", "cookie_secure": False},
     "Remove ENGINEX_COOKIE_SECURE"),
])
def test_check_safe_refuses_production_mistakes(overrides: dict[str, object], fix: str,
                                                tmp_path: Path) -> None:
    if overrides.get("data_dir") == "HAS_KEY_FILE":
        # even with a development key file present, PostgreSQL needs an explicit key
        (tmp_path / "master.key").write_text(generate_master_key())
        overrides = {**overrides, "data_dir": tmp_path}
    settings = Settings(**overrides)
    with pytest.raises(UnsafeConfigurationError, match=fix):
        settings.check_safe()
    with pytest.raises(UnsafeConfigurationError):
        create_app(settings)  # the server refuses to start with them too


def test_check_safe_accepts_the_explicit_ways_out() -> None:
    Settings(database_url=PG_URL, master_key=generate_master_key()).check_safe()
    Settings(database_url=PG_URL, allow_dev_key=True).check_safe()  # a throwaway setup
    Settings(base_url="https://app.enginex.example", cookie_secure=True).check_safe()
