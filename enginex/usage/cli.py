"""``enginex plan ...``: plans and organizations' plans, on the server (database access,
like ``enginex tenant create``). The same as the platform admin API (docs/USAGE.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `enginex --help` must not load pydantic (tests/test_cli_startup.py)
    from enginex.config import Settings


def _value(text: str) -> Any:
    """An override value from the command line: a number, ``null`` (unlimited) or a string."""
    if text == "null":
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _pairs(items: list[str]) -> dict[str, Any]:
    from enginex.cli import CliError

    found: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"'{item}': write limits as NAME=VALUE (VALUE null for unlimited)")
        found[name] = _value(value)
    return found


def cmd_plan_list(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.cli import _in_transaction, _migrate_embedded
    from enginex.usage import repository

    async def work(session: Any) -> list[dict[str, Any]]:
        return [{"key": p.key, "name": p.name, "weight": p.weight, "is_default": p.is_default,
                 "limits": p.limits} for p in await repository.list_plans(session)]

    _migrate_embedded(settings)
    plans = asyncio.run(_in_transaction(settings, work))
    if args.json:
        print(json.dumps(plans))
        return
    for plan in plans:
        default = " (default)" if plan["is_default"] else ""
        limits = ", ".join(f"{k}={'unlimited' if v is None else v}"
                           for k, v in plan["limits"].items())
        print(f"{plan['key']}{default}: {plan['name']}, weight {plan['weight']}; {limits}")


def cmd_plan_set(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.cli import CliError, _in_transaction, _migrate_embedded
    from enginex.orgs import repository as org_repo
    from enginex.usage import service

    overrides = _pairs(args.override) if args.override else ({} if args.clear else None)
    if args.plan is None and overrides is None and args.stripe_customer is None:
        raise CliError("give --plan KEY, --override NAME=VALUE, --clear-overrides or "
                       "--stripe-customer")

    async def work(session: Any) -> dict[str, Any]:
        org = await org_repo.get_org_by_slug(session, args.org)
        if org is None:
            raise CliError(f"there is no organization '{args.org}'")
        limits, resumed = await service.assign_plan(session, org.id, org.slug,
                                                    plan_key=args.plan, overrides=overrides,
                                                    actor_id=None,
                                                    stripe_customer_id=args.stripe_customer)
        return {"org": org.slug, "plan": limits.plan_key, "overrides": limits.overrides,
                "limits": limits.limits, "resumed_sessions": resumed}

    _migrate_embedded(settings)
    result = asyncio.run(_in_transaction(settings, work))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['org']}: plan {result['plan']}, overrides {result['overrides']}; "
              f"{result['resumed_sessions']} paused sessions resumed")


def add_plan_commands(subparsers: Any) -> None:
    """Register ``enginex plan ...`` on the top-level subparsers of ``enginex``."""
    plan = subparsers.add_parser("plan", help="plans and organizations' plans (server side)")
    actions = plan.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the plans and their limits")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_plan_list)
    setting = actions.add_parser(
        "set", help="give an organization a plan and/or overrides (audited in its log)",
        description="Limits are NAME=VALUE in their unit (docs/USAGE.md); VALUE null means "
                    "unlimited. Sessions paused for quota resume when the organization is "
                    "under budget again.")
    setting.add_argument("--org", required=True, metavar="SLUG")
    setting.add_argument("--plan", metavar="KEY", help="free, team, enterprise or your own")
    setting.add_argument("--override", action="append", metavar="NAME=VALUE",
                         help="replace the organization's overrides with these (repeatable)")
    setting.add_argument("--clear-overrides", dest="clear", action="store_true")
    setting.add_argument("--stripe-customer", metavar="CUS_ID",
                         help="the organization's Stripe customer for the meter events push "
                              "('' unlinks it)")
    setting.add_argument("--json", action="store_true")
    setting.set_defaults(func=cmd_plan_set)
    push = actions.add_parser(
        "push-stripe", help="push finished days of usage to Stripe Billing Meters",
        description="Needs ENGINEX_STRIPE_API_KEY. Sends one meter event per organization, "
                    "day, kind, provider and model with a deterministic identifier; run it "
                    "from cron (hourly is fine: each day is pushed once). docs/USAGE.md.")
    push.set_defaults(func=cmd_push_stripe)


def cmd_push_stripe(args: argparse.Namespace, settings: Settings) -> None:
    from enginex.cli import CliError, _migrate_embedded
    from enginex.db import Database
    from enginex.usage.stripe import StripeMeterClient, describe, push_meter_events

    if not settings.stripe_api_key:
        raise CliError("set ENGINEX_STRIPE_API_KEY to push meter events to Stripe")

    async def work() -> dict[str, Any]:
        db = Database(settings)
        client = StripeMeterClient(settings.stripe_api_key, base=settings.stripe_api_base)
        try:
            return describe(await push_meter_events(db.sessions, client,
                                                    prefix=settings.stripe_event_prefix))
        finally:
            await client.aclose()
            await db.dispose()

    _migrate_embedded(settings)
    result = asyncio.run(work())
    print(json.dumps(result))
    if result["failed_orgs"]:
        raise SystemExit(1)
