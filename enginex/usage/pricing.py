"""Estimated model cost: the platform admin's price override for (provider, model) or
(provider, '*') if there is one, else genai-prices. The price used is stored with the row."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

# EngineX provider kinds -> genai-prices provider ids.
GENAI_PROVIDER = {"openai": "openai", "anthropic": "anthropic"}
MICRO = Decimal(1_000_000)


@dataclass(frozen=True)
class Priced:
    input_micro_usd: int
    output_micro_usd: int
    price: dict[str, Any] | None  # None: no price known (cost 0, estimated)


def price_tokens(provider: str, model: str, *, input_tokens: int, output_tokens: int,
                 cached_tokens: int, overrides: dict[tuple[str, str], tuple[str, str]]) -> Priced:
    """The cost of one model call's tokens in micro-dollars, and the price used.

    ``overrides``: (provider, model or '*') -> (input, output) USD per million tokens."""
    override = overrides.get((provider, model)) or overrides.get((provider, "*"))
    if override is not None:
        per_in, per_out = Decimal(override[0]), Decimal(override[1])
        return Priced(int(per_in * input_tokens), int(per_out * output_tokens),
                      {"source": "override", "input_per_mtok": override[0],
                       "output_per_mtok": override[1]})
    if provider == "scripted" or not model:
        return Priced(0, 0, None)
    try:
        found = calc_price(PriceUsage(input_tokens=input_tokens, output_tokens=output_tokens,
                                      cache_read_tokens=cached_tokens or None),
                           model_ref=model, provider_id=GENAI_PROVIDER.get(provider))
    except LookupError:
        return Priced(0, 0, None)
    mp = found.model_price
    return Priced(int(found.input_price * MICRO), int(found.output_price * MICRO),
                  {"source": "genai-prices", "model": found.model.id,
                   "provider": found.provider.id,
                   "input_per_mtok": str(mp.input_mtok) if mp.input_mtok is not None else None,
                   "output_per_mtok": str(mp.output_mtok)
                   if mp.output_mtok is not None else None})
