"""proto"""

from __future__ import annotations

import time

import hypothesis
import pytest
import requests
import schemathesis
from requests.adapters import HTTPAdapter
from schemathesis.core.result import Ok
from schemathesis.pytest.lazy import get_all_tests

from tests.factories import Org, Server

MAX_EXAMPLES = 10


class _SourceAddressAdapter(HTTPAdapter):
    def __init__(self, address: str) -> None:
        self._address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = (self._address, 0)
        super().init_poolmanager(*args, **kwargs)


def error_shape(ctx, response, case):
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message", "details"}, body


def test_api(server: Server, org_a: Org) -> None:
    config = schemathesis.Config.from_dict({
        "base-url": server.base_url,
        "headers": {"Authorization": f"Bearer {org_a.api_keys['admin']}"},
        "parameters": {"org": org_a.slug},
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
        "checks": {"status_code_conformance": {"enabled": False},
                   "positive_data_acceptance": {"enabled": False}},
    })
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", config=config)
    session = requests.Session()
    session.mount("http://", _SourceAddressAdapter("127.77.0.1"))
    counts: dict[str, int] = {}

    def check_case(case) -> None:
        counts[case.operation.label] = counts.get(case.operation.label, 0) + 1
        case.call_and_validate(session=session, additional_checks=[error_shape])

    settings = hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                                   database=None,
                                   suppress_health_check=list(hypothesis.HealthCheck))
    failures = {}
    for result in get_all_tests(schema=schema, test_func=check_case, settings=settings,
                                given_kwargs=None):
        assert isinstance(result, Ok), result
        operation, test = result.ok()
        t = time.perf_counter()
        try:
            test()
        except (Exception, BaseExceptionGroup) as exc:
            failures[operation.label] = f"{type(exc).__name__}: {exc}"
        print(f"{operation.label}: {counts.get(operation.label, 0)} cases, "
              f"{time.perf_counter() - t:.1f}s")
    for label, text in failures.items():
        print("=" * 30, label, "\n", text[:3000])
    assert not failures, list(failures)
