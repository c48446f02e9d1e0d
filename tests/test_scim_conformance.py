"""SCIM conformance: ``scim2 test`` (scim2-cli running scim2-tester) against an organization's
SCIM endpoint of the test server on 127.0.0.1. The number of passed checks is recorded in
docs/SCIM.md ("Conformance")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.factories import Org, Server
from tests.test_scim import scim_token

SCIM2 = Path(sys.executable).with_name("scim2")
# Checks that cannot apply to this server, each with the reason (docs/SCIM.md lists them).
NOT_APPLICABLE: dict[str, str] = {
    "check_remove_attribute: PATCH modify() did not remove attribute 'active'":
        "a member is always active or disabled: removing 'active' leaves the state unchanged "
        "and the user still reports it",
}
# The number of checks this server passed when docs/SCIM.md was written; fewer is a regression.
PASSED_AT_LEAST = 134  # docs/SCIM.md "Conformance"


def run_scim2_test(server: Server, org: Org) -> tuple[list[tuple[str, str, str]], str]:
    """(status, title, reason) of every check, and the whole output."""
    env = {**os.environ, "SCIM_CLI_HEADERS": f"Authorization: Bearer {scim_token(org)}",
           "NO_COLOR": "1"}
    done = subprocess.run(
        [str(SCIM2), "--url", f"{server.base_url}/scim/v2/{org.slug}", "test"],
        capture_output=True, text=True, env=env, timeout=600, check=False)
    output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
    results: list[tuple[str, str, str]] = []
    for line in output.splitlines():
        match = re.match(r"^(SUCCESS|COMPLIANT|ACCEPTABLE|DEVIATION|ERROR|CRITICAL|SKIPPED) (.*)$",
                         line)
        if match:
            results.append((match.group(1), match.group(2), ""))
        elif results and line.startswith("  "):
            status, title, reason = results[-1]
            results[-1] = (status, title, (reason + " " + line.strip()).strip())
    assert results, f"scim2 test printed no results:\n{done.stdout}\n{done.stderr}"
    return results, output


def test_scim2_tester_passes_every_applicable_check(server: Server, org_a: Org) -> None:
    results, output = run_scim2_test(server, org_a)
    passed = [r for r in results if r[0] == "SUCCESS"]
    failed = [r for r in results if r[0] in {"ERROR", "CRITICAL", "DEVIATION"}
              and f"{r[1]}: {r[2]}" not in NOT_APPLICABLE]
    for status, title, reason in results:
        if status != "SUCCESS":
            print(f"  {status} {title}: {reason}")
    print(f"\nscim2-tester[{server.backend}]: {len(passed)} of {len(results)} checks passed; "
          f"{len(failed)} failed")
    assert not failed, "\n".join(f"{s} {t}: {r}" for s, t, r in failed)
    assert len(passed) >= PASSED_AT_LEAST, output
