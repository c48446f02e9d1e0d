"""A Hypothesis state machine interleaving random operations of two tenants over real HTTP.

org_a and org_b each deploy the demo agent once (as their builder), then act at random
through their admin and operator members (session cookie with the CSRF header) and their API
keys: create and revoke invitations, accept them (new members), create, use and revoke API
keys, start and cancel sessions, decide approvals, and try the other tenant's ids through
their own organization's path. The test keeps a model of what each tenant owns (what its
organization held before the machine started, plus what the machine created), and after
every step it checks:

* each tenant's listings of members, invitations, API keys and sessions hold exactly the ids
  that tenant owns, in the state the model expects (revoked, accepted), and none of the other
  tenant's;
* each tenant's approvals and reports belong to its own sessions, never to the other's;
* a GET of one of the other tenant's sessions (detail, events, checkpoints), approvals or
  reports (detail, download) through one's own organization's path answers the 404 of a
  missing id, body included (a different id at each step).

Rules that act on the other tenant's ids (read, cancel, decide, revoke, change a role, remove
a member) must get that same 404, and the owner's listings right after show nothing changed.

The server and both organizations live for the whole test, across Hypothesis' examples, so
the model does too. Every draw has fixed bounds (an index into the sorted ids, not a choice
among the ids the server holds right now), so Hypothesis can replay its choices. Examples
are derandomized; shrinking is off, since every step changes the server. A failure reports
the first failing step with the steps before it: Hypothesis' own replay of a failing example
meets a server that has moved on.
"""

from __future__ import annotations

import functools
import itertools
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from enginex.kit.errors import NOT_FOUND_MESSAGE
from tests.factories import (
    PASSWORD,
    TIMESHEET,
    Org,
    Server,
    accept,
    api_key_client,
    deploy_agent,
)

INVARIANTS = {"listings_hold_exactly_own_objects", "foreign_id_is_not_found"}
MAX_EXAMPLES = 8
STEPS = 20
TENANTS = ("a", "b")
ROLES = ("admin", "builder", "operator", "viewer")
FINISHED = {"succeeded", "failed", "cancelled"}
EXPECTED_404 = {"error": {"code": "not_found", "message": NOT_FOUND_MESSAGE, "details": {}}}
_ANY_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                    max_size=40)
# Names for new API keys: any text, whitespace-only ones (422) and ones with a NUL character
# (422 on every backend, as PostgreSQL cannot store it) included.
KEY_NAMES = st.one_of(_ANY_TEXT, _ANY_TEXT.map(lambda text: f"{text}\x00"))


# Which existing object a rule acts on: an index into the sorted ids. Every draw has fixed
# bounds, whatever the server holds, so that Hypothesis can replay its choices.
PICK = st.integers(min_value=0, max_value=2**16)


def choose(items: Any, pick: int) -> str:
    ordered = sorted(items)
    return ordered[pick % len(ordered)]


# Unicode White_Space: what pydantic's ``str_strip_whitespace`` trims. Python's ``str.strip``
# also trims the separators U+001C..U+001F.
WHITE_SPACE = "".join(c for c in map(chr, range(0x3001))
                      if c.isspace() and c not in "\x1c\x1d\x1e\x1f")


def _trim(text: str) -> str:
    return text.strip(WHITE_SPACE)


def other(tenant: str) -> str:
    return "b" if tenant == "a" else "a"


@dataclass
class TenantModel:
    """What one tenant owns, as the test knows it."""

    members: set[str] = field(default_factory=set)
    # invitation id -> token (None: made before the machine), and their states
    invitations: dict[str, str | None] = field(default_factory=dict)
    revoked_invitations: set[str] = field(default_factory=set)
    accepted_invitations: set[str] = field(default_factory=set)
    # API key id -> token (None: a fixture key the machine must never revoke)
    api_keys: dict[str, str | None] = field(default_factory=dict)
    revoked_keys: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    # Seen in the tenant's own listings (created by its sessions, not by the test).
    approvals: dict[str, str] = field(default_factory=dict)  # approval id -> status
    reports: set[str] = field(default_factory=set)


@dataclass
class Tenant:
    org: Org
    admin_key: httpx.Client
    operator_key: httpx.Client
    model: TenantModel

    def path(self, suffix: str = "") -> str:
        return f"/api/v1/orgs/{self.org.slug}{suffix}"

    def admin(self, via: str) -> httpx.Client:
        return self.org.admin.client if via == "member" else self.admin_key

    def operator(self, via: str) -> httpx.Client:
        return self.org.members["operator"].client if via == "member" else self.operator_key


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.request.method, str(response.request.url),
                                            response.status_code, response.text)
    return response.json() if response.content else None


def _assert_404(response: httpx.Response) -> None:
    assert response.status_code == 404, (response.request.method, str(response.request.url),
                                         response.status_code, response.text)
    assert response.json() == EXPECTED_404, response.text


def _assert_exactly(kind: str, t: str, listed: set[str], owned: set[str],
                    rival: set[str]) -> None:
    leaked = listed & rival
    assert not leaked, f"tenant {t}'s {kind} listing shows the other tenant's {sorted(leaked)}"
    assert listed == owned, (f"tenant {t}'s {kind} listing: not its own {sorted(listed - owned)},"
                             f" missing {sorted(owned - listed)}")


def list_sessions(tenant: Tenant, client: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 200}
    while True:
        page = _ok(client.get(tenant.path("/sessions"), params=params))
        items.extend(page["items"])
        if not page["next_cursor"]:
            return items
        params["cursor"] = page["next_cursor"]


def _baseline(tenant: Tenant) -> None:
    """What the organization already holds: its members, invitations and keys from the
    factory, and whatever earlier tests or examples left in it."""
    client, model = tenant.org.admin.client, tenant.model
    model.members = {m["user_id"] for m in _ok(client.get(tenant.path("/members")))}
    for invitation in _ok(client.get(tenant.path("/invitations"))):
        model.invitations[invitation["id"]] = None
        if invitation["revoked_at"]:
            model.revoked_invitations.add(invitation["id"])
        if invitation["accepted_at"]:
            model.accepted_invitations.add(invitation["id"])
    for key in _ok(client.get(tenant.path("/api-keys"))):
        model.api_keys[key["id"]] = None
        if key["revoked_at"]:
            model.revoked_keys.add(key["id"])
    model.sessions = {s["id"] for s in list_sessions(tenant, client)}


def make_machine(server: Server, tenants: dict[str, Tenant], failures: list[str],
                 ran: Counter[str]) -> type[RuleBasedStateMachine]:
    counter = itertools.count()
    steps: list[str] = []

    def recorded(function: Callable[..., None]) -> Callable[..., None]:
        """Log each step; keep the first failure with the steps that led to it (Hypothesis
        replays a failing example to report it, but the server has moved on by then)."""

        @functools.wraps(function)
        def step(self: RuleBasedStateMachine, **arguments: Any) -> None:
            steps.append(f"{function.__name__}({arguments})")
            ran[function.__name__] += 1
            try:
                function(self, **arguments)
            except Exception:
                if not failures:
                    failures.append("\n".join(steps[-40:]) + "\n" + traceback.format_exc())
                raise

        return step

    class TwoTenants(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            steps.append("--- new machine")

        # --- members and invitations -------------------------------------------------------

        @rule(t=st.sampled_from(TENANTS), role=st.sampled_from(ROLES),
              via=st.sampled_from(["member", "key"]))
        @recorded
        def create_invitation(self, t: str, role: str, via: str) -> None:
            tenant = tenants[t]
            email = f"sm-{next(counter)}-{tenant.org.slug}@example.org"
            body = _ok(tenant.admin(via).post(tenant.path("/invitations"),
                                              json={"email": email, "role": role}), 201)
            assert body["email"] == email and body["role"] == role
            assert body["token"].startswith(f"inv_{tenant.org.id.replace('-', '')}_")
            tenant.model.invitations[body["id"]] = body["token"]

        @rule(t=st.sampled_from(TENANTS), pick=PICK)
        @recorded
        def revoke_invitation(self, t: str, pick: int) -> None:
            tenant = tenants[t]
            if not tenant.model.invitations:
                return
            invitation = choose(tenant.model.invitations, pick)
            response = tenant.org.admin.client.delete(tenant.path(f"/invitations/{invitation}"))
            if invitation in tenant.model.accepted_invitations:
                assert response.status_code == 409, response.text
                return
            _ok(response, 204)
            tenant.model.revoked_invitations.add(invitation)

        @rule(t=st.sampled_from(TENANTS), pick=PICK)
        @recorded
        def accept_invitation(self, t: str, pick: int) -> None:
            model = tenants[t].model
            open_ = sorted(i for i, token in model.invitations.items() if token
                           and i not in model.revoked_invitations
                           and i not in model.accepted_invitations)
            if not open_:
                return
            invitation = choose(open_, pick)
            token = model.invitations[invitation]
            assert token is not None
            body = _ok(accept(server, token, PASSWORD))
            assert body["org_slug"] == tenants[t].org.slug and body["new_account"] is True
            model.accepted_invitations.add(invitation)
            model.members.add(body["user_id"])

        # --- API keys ----------------------------------------------------------------------

        @rule(t=st.sampled_from(TENANTS), role=st.sampled_from(ROLES), name=KEY_NAMES,
              via=st.sampled_from(["member", "key"]))
        @recorded
        def create_api_key(self, t: str, role: str, name: str, via: str) -> None:
            tenant = tenants[t]
            response = tenant.admin(via).post(tenant.path("/api-keys"),
                                              json={"name": name, "role": role})
            if not _trim(name) or "\x00" in name:
                assert response.status_code == 422, response.text
                assert response.json()["error"]["code"] == "validation_failed"
                return
            body = _ok(response, 201)
            assert body["role"] == role and body["name"] == _trim(name)
            assert body["token"].startswith(f"enx_{tenant.org.id.replace('-', '')}_")
            tenant.model.api_keys[body["id"]] = body["token"]

        @rule(t=st.sampled_from(TENANTS), pick=PICK)
        @recorded
        def revoke_api_key(self, t: str, pick: int) -> None:
            tenant = tenants[t]
            mine = sorted(k for k, token in tenant.model.api_keys.items() if token)
            if not mine:
                return
            key = choose(mine, pick)
            _ok(tenant.org.admin.client.delete(tenant.path(f"/api-keys/{key}")), 204)
            tenant.model.revoked_keys.add(key)

        @rule(t=st.sampled_from(TENANTS), pick=PICK)
        @recorded
        def use_created_api_key(self, t: str, pick: int) -> None:
            """A new key reads its own organization's sessions only, and stops working the
            moment it is revoked; the other organization's path is 404 for it."""
            tenant, rival = tenants[t], tenants[other(t)]
            mine = sorted(k for k, token in tenant.model.api_keys.items() if token)
            if not mine:
                return
            key = choose(mine, pick)
            token = tenant.model.api_keys[key]
            assert token is not None
            with api_key_client(server, token) as client:
                own = client.get(tenant.path("/sessions"), params={"limit": 200})
                foreign = client.get(rival.path("/sessions"))
            if key in tenant.model.revoked_keys:
                assert own.status_code == 401, own.text
                assert foreign.status_code == 401, foreign.text
                return
            ids = {s["id"] for s in _ok(own)["items"]}
            assert ids <= tenant.model.sessions
            assert not ids & rival.model.sessions
            _assert_404(foreign)

        # --- sessions and approvals --------------------------------------------------------

        @rule(t=st.sampled_from(TENANTS), via=st.sampled_from(["member", "key"]))
        @recorded
        def start_session(self, t: str, via: str) -> None:
            tenant = tenants[t]
            body = _ok(tenant.operator(via).post(tenant.path("/sessions"), json={
                "agent": "hourly-tracking", "inputs": {"timesheet": TIMESHEET}}), 201)
            assert body["agent"] == "hourly-tracking" and body["status"] == "queued"
            tenant.model.sessions.add(body["id"])

        @rule(t=st.sampled_from(TENANTS), pick=PICK,
              via=st.sampled_from(["member", "key"]))
        @recorded
        def cancel_session(self, t: str, pick: int, via: str) -> None:
            tenant = tenants[t]
            if not tenant.model.sessions:
                return
            run = choose(tenant.model.sessions, pick)
            response = tenant.operator(via).post(tenant.path(f"/sessions/{run}/cancel"))
            if response.status_code == 409:
                assert response.json()["error"]["code"] == "session_finished"
                status = _ok(tenant.org.admin.client.get(tenant.path(f"/sessions/{run}")))
                assert status["status"] in FINISHED, status
                return
            assert _ok(response)["status"] == "cancelled"

        @rule(t=st.sampled_from(TENANTS), pick=PICK,
              decision=st.sampled_from(["approve", "reject"]))
        @recorded
        def decide_approval(self, t: str, pick: int, decision: str) -> None:
            tenant = tenants[t]
            pending = sorted(a for a, s in tenant.model.approvals.items() if s == "pending")
            if not pending:
                return
            approval = choose(pending, pick)
            response = tenant.org.members["operator"].client.post(
                tenant.path(f"/approvals/{approval}/decision"),
                json={"decision": decision, "comment": "state machine"})
            if response.status_code == 409:  # cancelled with its session meanwhile
                current = _ok(tenant.org.admin.client.get(tenant.path(f"/approvals/{approval}")))
                assert current["status"] != "pending", current
                tenant.model.approvals[approval] = current["status"]
                return
            body = _ok(response)
            assert body["decision"] == decision
            tenant.model.approvals[approval] = body["status"]

        # --- the other tenant's ids through one's own organization's path ----------------

        @rule(t=st.sampled_from(TENANTS), pick=PICK,
              suffix=st.sampled_from(["", "/events", "/checkpoints"]))
        @recorded
        def read_foreign_session(self, t: str, pick: int, suffix: str) -> None:
            tenant, victim = tenants[t], tenants[other(t)]
            if not victim.model.sessions:
                return
            run = choose(victim.model.sessions, pick)
            for client in (tenant.org.admin.client, tenant.admin_key):
                _assert_404(client.get(tenant.path(f"/sessions/{run}{suffix}")))
                _assert_404(client.post(tenant.path(f"/sessions/{run}/cancel")))
                reports = _ok(client.get(tenant.path("/reports"), params={"session": run}))
                assert reports == [], reports
            _ok(victim.org.admin.client.get(victim.path(f"/sessions/{run}{suffix}")))

        @rule(t=st.sampled_from(TENANTS), pick=PICK)
        @recorded
        def read_foreign_approval_or_report(self, t: str, pick: int) -> None:
            tenant, victim = tenants[t], tenants[other(t)]
            targets = [f"/approvals/{a}" for a in sorted(victim.model.approvals)] + [
                f"/reports/{r}{suffix}" for r in sorted(victim.model.reports)
                for suffix in ("", "/download")]
            if not targets:
                return
            target = choose(targets, pick)
            for client in (tenant.org.members["operator"].client, tenant.admin_key):
                _assert_404(client.get(tenant.path(target)))
                if target.startswith("/approvals/"):
                    _assert_404(client.post(tenant.path(f"{target}/decision"),
                                            json={"decision": "approve"}))
            assert victim.org.admin.client.get(victim.path(target)).status_code == 200

        @rule(t=st.sampled_from(TENANTS), pick=PICK,
              kind=st.sampled_from(["invitation", "api_key", "member_role", "member_remove"]),
              via=st.sampled_from(["member", "key"]))
        @recorded
        def write_foreign(self, t: str, pick: int, kind: str, via: str) -> None:
            """Revoking, re-roling or removing the other tenant's objects: 404, no change
            (the invariants check the owner's listings right after)."""
            tenant, victim = tenants[t], tenants[other(t)].model
            pools = {"invitation": victim.invitations, "api_key": victim.api_keys,
                     "member_role": victim.members, "member_remove": victim.members}
            target = choose(pools[kind], pick)
            client = tenant.admin(via)
            if kind == "invitation":
                _assert_404(client.delete(tenant.path(f"/invitations/{target}")))
            elif kind == "api_key":
                _assert_404(client.delete(tenant.path(f"/api-keys/{target}")))
            elif kind == "member_role":
                _assert_404(client.patch(tenant.path(f"/members/{target}"),
                                         json={"role": "viewer"}))
            else:
                _assert_404(client.delete(tenant.path(f"/members/{target}")))

        # --- invariants ----------------------------------------------------------------------

        @invariant()
        @recorded
        def listings_hold_exactly_own_objects(self) -> None:
            for t in TENANTS:
                tenant, rival = tenants[t], tenants[other(t)].model
                model = tenant.model
                client = tenant.admin(["member", "key"][next(counter) % 2])

                members = {m["user_id"] for m in _ok(client.get(tenant.path("/members")))}
                _assert_exactly("member", t, members, model.members, rival.members)

                invitations = _ok(client.get(tenant.path("/invitations")))
                _assert_exactly("invitation", t, {i["id"] for i in invitations},
                                set(model.invitations), set(rival.invitations))
                for invitation in invitations:
                    i = invitation["id"]
                    assert bool(invitation["revoked_at"]) == (i in model.revoked_invitations), (
                        t, invitation)
                    assert bool(invitation["accepted_at"]) == (
                        i in model.accepted_invitations), (t, invitation)

                keys = _ok(client.get(tenant.path("/api-keys")))
                _assert_exactly("API key", t, {k["id"] for k in keys}, set(model.api_keys),
                                set(rival.api_keys))
                for key in keys:
                    assert bool(key["revoked_at"]) == (key["id"] in model.revoked_keys), (t, key)

                sessions = {s["id"] for s in list_sessions(tenant, client)}
                _assert_exactly("session", t, sessions, model.sessions, rival.sessions)

                approvals = _ok(client.get(tenant.path("/approvals"), params={"limit": 500}))
                for approval in approvals:
                    assert approval["run_id"] in model.sessions, (
                        f"tenant {t} lists an approval of a session it does not own", approval)
                    assert approval["id"] not in rival.approvals, (t, approval)
                    model.approvals[approval["id"]] = approval["status"]

                reports = _ok(client.get(tenant.path("/reports"), params={"limit": 500}))
                for report in reports:
                    assert report["run_id"] in model.sessions, (
                        f"tenant {t} lists a report of a session it does not own", report)
                    assert report["id"] not in rival.reports, (t, report)
                    model.reports.add(report["id"])

        @invariant()
        @recorded
        def foreign_id_is_not_found(self) -> None:
            """One of the other tenant's sessions, approvals or reports (a different one at
            each step) through one's own organization's path: 404, the body of a missing id."""
            step = next(counter)
            for t in TENANTS:
                tenant, victim = tenants[t], tenants[other(t)].model
                targets = [f"/sessions/{run}{suffix}" for run in sorted(victim.sessions)
                           for suffix in ("", "/events", "/checkpoints")]
                targets += [f"/approvals/{approval}" for approval in sorted(victim.approvals)]
                targets += [f"/reports/{report}{suffix}" for report in sorted(victim.reports)
                            for suffix in ("", "/download")]
                if targets:
                    client = tenant.admin(["member", "key"][step % 2])
                    _assert_404(client.get(tenant.path(targets[step % len(targets)])))

    return TwoTenants


def test_two_tenants_interleaved_never_see_each_other(server: Server, org_a: Org,
                                                      org_b: Org) -> None:
    tenants: dict[str, Tenant] = {}
    for name, org in (("a", org_a), ("b", org_b)):
        deployed = deploy_agent(org)
        assert deployed["agent_key"] == "hourly-tracking"
        tenants[name] = Tenant(org=org, model=TenantModel(),
                               admin_key=api_key_client(server, org.api_keys["admin"]),
                               operator_key=api_key_client(server, org.api_keys["operator"]))
        _baseline(tenants[name])
    assert not set(tenants["a"].model.members) & set(tenants["b"].model.members)
    failures: list[str] = []
    ran: Counter[str] = Counter()
    try:
        run_state_machine_as_test(make_machine(server, tenants, failures, ran), settings=settings(
            max_examples=MAX_EXAMPLES, stateful_step_count=STEPS, deadline=None,
            derandomize=True,
            database=None, phases=(Phase.explicit, Phase.generate), print_blob=False,
            suppress_health_check=list(HealthCheck)))
    except BaseException as exc:
        if failures:
            raise AssertionError(f"first failing step, after:\n{failures[0]}") from exc
        raise
    finally:
        for tenant in tenants.values():
            tenant.admin_key.close()
            tenant.operator_key.close()
    sizes = {t: {"sessions": len(m.model.sessions), "keys": len(m.model.api_keys),
                 "invitations": len(m.model.invitations), "members": len(m.model.members)}
             for t, m in tenants.items()}
    steps = sum(n for name, n in ran.items() if name not in INVARIANTS)
    print(f"\nstate machine[{server.backend}]: {steps} steps, "
          f"rules run {dict(sorted(ran.items()))}, final model {sizes}")
    assert all(size["sessions"] > 0 for size in sizes.values()), sizes
    assert ran["start_session"] and ran["write_foreign"] and ran["read_foreign_session"], ran
