"""The org admin's credentials page over real HTTP (/o/{org}/settings/credentials).

The threat model: values are write-only -- no page ever contains a submitted secret, not the
list, not the re-rendered form after a mistake, not the page after a replacement; members
with credentials:read see names, types and fields only and are refused every change; another
organization's slug or credential ids get the not-found page.
"""

from __future__ import annotations

import html
import secrets

import httpx

from tests.factories import Actor, Org


def page_url(org: Org) -> str:
    return f"/o/{org.slug}/settings/credentials"


def no_secret(response: httpx.Response, *values: str) -> None:
    for value in values:
        assert value not in response.text
        assert value not in html.unescape(response.text)


def create(actor: Actor, org: Org, name: str, key: str) -> httpx.Response:
    return actor.client.post(page_url(org), data={"type": "api_key", "name": name,
                                                  "description": "CRM", "value.key": key})


def credential_id(org: Org, name: str) -> str:
    listed = org.admin.client.get(f"/api/v1/orgs/{org.slug}/credentials").json()
    return next(c["id"] for c in listed if c["name"] == name)


def test_admin_creates_replaces_and_deletes_without_ever_seeing_a_value(org_a: Org) -> None:
    admin, operator = org_a.admin, org_a.members["operator"]
    secret = "sk_live_" + secrets.token_hex(16)
    empty = admin.client.get(page_url(org_a))
    assert empty.status_code == 200 and "No credentials yet." in empty.text
    assert f'action="/o/{org_a.slug}/settings/credentials"' in empty.text

    created = create(admin, org_a, "crm_api", secret)
    assert created.status_code == 303
    assert created.headers["location"] == page_url(org_a) + "?notice=created"
    shown = admin.client.get(created.headers["location"])
    assert shown.status_code == 200
    assert "Credential created." in shown.text
    assert "crm_api" in shown.text and "****" + secret[-4:] in shown.text
    assert "<code>key</code>" in shown.text
    no_secret(created, secret)
    no_secret(shown, secret)

    # Mistakes re-render with the service's message and without the submitted values.
    other = "sk_other_" + secrets.token_hex(16)
    taken = create(admin, org_a, "crm_api", other)
    assert taken.status_code == 409
    assert "already exists" in html.unescape(taken.text)
    no_secret(taken, other, secret)
    bad_name = create(admin, org_a, "Bad Name!", other)
    assert bad_name.status_code == 422
    assert "1-64 lowercase letters" in html.unescape(bad_name.text)
    assert 'value="Bad Name!"' in html.unescape(bad_name.text)  # the name is kept, not values
    no_secret(bad_name, other, secret)
    missing = admin.client.post(page_url(org_a), data={"type": "basic_auth", "name": "ldap",
                                                       "value.password": other})
    assert missing.status_code == 422
    assert "missing username" in html.unescape(missing.text)
    no_secret(missing, other, secret)
    unknown = admin.client.post(page_url(org_a), data={"type": "ssh", "name": "x",
                                                       "value.key": other})
    assert unknown.status_code == 422
    no_secret(unknown, other)

    # The operator sees names, types and fields, no hint and no forms; changes are refused.
    seen = operator.client.get(page_url(org_a))
    assert seen.status_code == 200 and "crm_api" in seen.text
    assert "****" not in seen.text and "/replace" not in seen.text and "Create a" not in seen.text
    no_secret(seen, secret)
    cid = credential_id(org_a, "crm_api")
    for url, data in ((page_url(org_a), {"type": "api_key", "name": "mine", "value.key": other}),
                      (f"{page_url(org_a)}/{cid}/replace", {"value.key": other}),
                      (f"{page_url(org_a)}/{cid}/delete", {})):
        refused = operator.client.post(url, data=data)
        assert refused.status_code == 403
        no_secret(refused, other)

    # Replace: a new hint, a new value version, the old and new values never shown.
    fresh = "sk_new_" + secrets.token_hex(16)
    replaced = admin.client.post(f"{page_url(org_a)}/{cid}/replace", data={"value.key": fresh})
    assert replaced.status_code == 303
    after = admin.client.get(replaced.headers["location"])
    assert "Values replaced." in after.text and "****" + fresh[-4:] in after.text
    no_secret(after, fresh, secret)
    meta = admin.client.get(f"/api/v1/orgs/{org_a.slug}/credentials/{cid}").json()
    assert meta["value_version"] == 2 and meta["hint"] == "****" + fresh[-4:]
    empty_replace = admin.client.post(f"{page_url(org_a)}/{cid}/replace", data={})
    assert empty_replace.status_code == 422
    assert "missing key" in html.unescape(empty_replace.text)

    deleted = admin.client.post(f"{page_url(org_a)}/{cid}/delete")
    assert deleted.status_code == 303
    gone = admin.client.get(deleted.headers["location"])
    assert "Credential deleted." in gone.text and "crm_api" not in gone.text
    assert admin.client.get(f"/api/v1/orgs/{org_a.slug}/credentials").json() == []
    assert admin.client.post(f"{page_url(org_a)}/{cid}/delete").status_code == 404


def test_other_organizations_get_the_not_found_page(org_a: Org, org_b: Org) -> None:
    secret = "sk_live_" + secrets.token_hex(16)
    assert create(org_a.admin, org_a, "crm_api", secret).status_code == 303
    cid = credential_id(org_a, "crm_api")
    intruder = org_b.admin
    foreign = intruder.client.get(page_url(org_a))
    assert foreign.status_code == 404
    assert "crm_api" not in foreign.text
    for action, data in (("replace", {"value.key": "x" * 20}), ("delete", {})):
        # org_b's own page with org_a's id, and org_a's page: both not found.
        assert intruder.client.post(f"{page_url(org_b)}/{cid}/{action}",
                                    data=data).status_code == 404
        assert intruder.client.post(f"{page_url(org_a)}/{cid}/{action}",
                                    data=data).status_code == 404
    missing = org_a.admin.client.post(f"{page_url(org_a)}/{cid[:-4]}ffff/delete")
    assert missing.status_code == 404
    # The not-found page says the same for a random id and for another organization's.
    assert "crm_api" not in missing.text and "crm_api" not in foreign.text
    still = org_a.admin.client.get(f"/api/v1/orgs/{org_a.slug}/credentials/{cid}").json()
    assert still["value_version"] == 1


def test_custom_credentials_take_named_fields(org_a: Org) -> None:
    admin, token = org_a.admin, "tok_" + secrets.token_hex(16)
    created = admin.client.post(page_url(org_a), data={
        "type": "custom", "name": "erp", "field_name_1": "tenant", "field_value_1": "acme-1",
        "field_name_2": "token", "field_value_2": token, "field_name_3": "", "field_value_3": ""})
    assert created.status_code == 303
    shown = admin.client.get(page_url(org_a))
    assert "<code>tenant</code>, <code>token</code>" in shown.text
    assert 'name="value.tenant"' in shown.text and 'name="value.token"' in shown.text
    no_secret(shown, token, "acme-1")
    cid = credential_id(org_a, "erp")
    partial = admin.client.post(f"{page_url(org_a)}/{cid}/replace", data={"value.token": "x"})
    assert partial.status_code == 422  # the page replaces values, never drops a field
    assert "fill in every field (tenant, token)" in html.unescape(partial.text)
    fresh = "tok_" + secrets.token_hex(16)
    replaced = admin.client.post(f"{page_url(org_a)}/{cid}/replace",
                                 data={"value.tenant": "acme-2", "value.token": fresh})
    assert replaced.status_code == 303
    no_secret(admin.client.get(replaced.headers["location"]), fresh, "acme-2", token)
    meta = admin.client.get(f"/api/v1/orgs/{org_a.slug}/credentials/{cid}").json()
    assert meta["fields"] == ["tenant", "token"] and meta["value_version"] == 2
