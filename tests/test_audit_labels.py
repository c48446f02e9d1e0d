"""Every audit action the code records has its words in enginex/audit/labels.py (the audit
page shows those words and offers them as filter choices), and the words read as words."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from enginex.audit import labels
from enginex.sso.models import SsoAuditAction

ROOT = Path(__file__).resolve().parents[1] / "enginex"
CODE = re.compile(r"^[a-z_]+\.[a-z_]+$")


def _recorded_actions() -> set[str]:
    """Action codes in the source: string constants passed to a ``record*`` call, or assigned
    in a module that calls one (``action = "auth.login_succeeded" if ok else ...``)."""
    found: set[str] = set()
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls_record = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else \
                    func.id if isinstance(func, ast.Name) else ""
                if name.startswith("record") or name.endswith("_audit"):
                    calls_record = True
                    for arg in [*node.args, *(k.value for k in node.keywords
                                              if k.arg == "action")]:
                        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                                and CODE.match(arg.value):
                            found.add(arg.value)
        if calls_record:
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign | ast.AnnAssign) and \
                        any(isinstance(t, ast.Name) and "action" in t.id.lower()
                            for t in (node.targets if isinstance(node, ast.Assign)
                                      else [node.target])):
                    for const in ast.walk(node.value) if node.value else []:
                        if isinstance(const, ast.Constant) and isinstance(const.value, str) \
                                and CODE.match(const.value):
                            found.add(const.value)
    return found


def test_every_recorded_action_has_words() -> None:
    recorded = _recorded_actions() | {a.value for a in SsoAuditAction}
    # The scan finds the ones this issue was about, so it is looking in the right places.
    assert {"auth.login_succeeded", "member.added", "session.started",
            "sso.login_succeeded", "org.created"} <= recorded
    missing = sorted(recorded - set(labels.ACTIONS))
    assert missing == [], f"add these to enginex/audit/labels.py ACTIONS: {missing}"
    areas = {code.partition(".")[0] for code in labels.ACTIONS}
    assert areas <= set(labels.AREAS), sorted(areas - set(labels.AREAS))


def test_labels_are_words_and_unknown_codes_still_read() -> None:
    assert labels.action_label("auth.login_succeeded") == "Signed in"
    for code, words in labels.ACTIONS.items():
        assert "_" not in words and "." not in words.rstrip("."), (code, words)
    assert labels.action_label("member.frobnicated") == "Members: frobnicated"
    assert labels.action_label("new_area.thing_done") == "New area: thing done"
    assert labels.target_label("agent_version") == "Agent version"
    assert labels.target_label("brand_new") == "Brand new"
    assert labels.actor_kind_label("api_key") == "API key"
    groups = labels.action_groups()
    assert groups[0].prefix == "auth." and ("auth.login_failed", "Sign-in failed") in \
        groups[0].actions
    assert sum(len(g.actions) for g in groups) == len(labels.ACTIONS)
