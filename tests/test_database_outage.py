"""The API while PostgreSQL is down or restarting: a clear 503 that says to send the same
request again (never a 500), and normal answers as soon as the database is back.

Found by benchmarks/faults.py: after a PostgreSQL restart, requests that met a connection
cut by the restart answered 500 "internal_error", and clients do not retry a 500 blindly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from enginex.migrate import upgrade
from tests.conftest import _ServerThread
from tests.factories import Server, deploy_agent, make_org, make_platform_admin, wait_for
from tests.pg_private import PrivateCluster, private_pg  # noqa: F401 - the fixture


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_database_outage_answers_503_and_the_api_recovers(
        private_pg: PrivateCluster, tmp_path: Path) -> None:  # noqa: F811
    database = private_pg.create_database()
    settings = private_pg.settings_for(database, tmp_path / "data", embedded_worker=False)
    upgrade(settings)
    thread = _ServerThread(settings)
    thread.start()
    try:
        server = Server(base_url=f"http://127.0.0.1:{thread.port}", settings=thread.settings,
                        backend="postgres", app=thread.app)
        org = make_org(server, make_platform_admin(server), "outage")
        deploy_agent(org)
        viewer = org.members["viewer"].client
        sessions = f"/api/v1/orgs/{org.slug}/sessions"
        assert viewer.get(sessions).status_code == 200
        private_pg.stop()
        server_errors = _Records()
        logging.getLogger("uvicorn.error").addHandler(server_errors)
        try:
            for path in (sessions, f"/api/v1/orgs/{org.slug}/members"):
                down = viewer.get(path)
                assert down.status_code == 503, down.text
                error = down.json()["error"]
                assert error["code"] == "database_unavailable", error
                assert "Send the same request again" in error["message"]
                assert down.headers["retry-after"] == "2"
            start = org.members["operator"].client.post(
                sessions, headers={"Idempotency-Key": "outage-1"},
                json={"agent": "hourly-tracking", "inputs": {"timesheet": "a,b\n"}})
            assert start.status_code == 503, start.text
            assert not [r for r in server_errors.records if r.exc_info], \
                "a 503 for an unavailable database is answered in the app, never re-raised " \
                "to the server (whose log would show a traceback)"
        finally:
            logging.getLogger("uvicorn.error").removeHandler(server_errors)
            private_pg.start()

        def answers() -> httpx.Response | None:
            response = viewer.get(sessions)
            return response if response.status_code == 200 else None

        back = wait_for(answers, what="the API to read again after the restart")
        assert back.json()["items"] == [], "the start refused during the outage saved nothing"
    finally:
        thread.stop()
