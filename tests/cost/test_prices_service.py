"""Prices over gRPC: a real cost server on 127.0.0.1:0 over each ledger backend, configured
with dated prices, cached-input prices, billing in another currency and exchange rates.
RecordUsage prices a call at the price of its time and never rewrites a past record; a model
with no price is FAILED_PRECONDITION with nothing written; ListPrices shows the history;
EstimateCost prices without recording."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from quorum import cli, config
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from services.cost.config import from_config
from services.cost.server import create
from tests.cost.test_cost_service import error_info, rpc_error, usage_request

if TYPE_CHECKING:
    from tests.cost.conftest import LedgerStore

T1 = 1_796_083_200  # 2026-12-01T00:00:00Z, in seconds

PRICES = """
[models.gpt-4-1]
cached_input_per_mtok = "0.50"

[[models.gpt-4-1.prices]]
effective_from = "2026-12-01T00:00:00Z"
input_per_mtok = "1.00"
output_per_mtok = "4.00"

[[exchange_rates]]
from = "USD"
to = "CNY"
rate = "7.3"

[[exchange_rates]]
from = "EUR"
to = "USD"
rate = "1.08"

[providers.reseller]
base_url = "https://reseller.example/v1"
billing_currency = "CNY"
billing_rate = "1"

[providers.cn-official]
base_url = "https://cn.example/v1"
billing_currency = "CNY"

[models.resold-gpt]
provider = "reseller"
provider_model = "gpt-4.1"
input_per_mtok = "2.00"
output_per_mtok = "8.00"

[models.official-gpt]
provider = "cn-official"
provider_model = "gpt-4.1"
input_per_mtok = "2.00"
output_per_mtok = "8.00"

[models.cached-gpt]
provider = "openai"
provider_model = "gpt-4.1"
input_per_mtok = "2.00"
output_per_mtok = "8.00"
cached_input_per_mtok = "0.50"

[models.unpriced]
provider = "openai"

[models.later]
provider = "openai"
[[models.later.prices]]
effective_from = "2026-12-01T00:00:00Z"
input_per_mtok = "1"
output_per_mtok = "1"
"""


def merged(text: str) -> dict[str, Any]:
    """The embedded defaults with ``text`` merged over them, as a --config file would be."""
    data = config.defaults()
    for key, value in tomllib.loads(text).items():
        if key in ("models", "providers"):
            for name, table in value.items():
                data[key][name] = {**data[key].get(name, {}), **table}
        else:
            data[key] = value
    return data


@contextlib.asynccontextmanager
async def serving(
    text: str, store: LedgerStore, tmp_path: Path
) -> AsyncIterator[tuple[cost_pb2_grpc.CostServiceStub, str]]:
    """A cost server configured with ``text`` over ``store``: its stub and its address."""
    settings = from_config(
        merged(text), {"QUORUM_DATA_DIR": str(tmp_path)}, address="127.0.0.1:0",
        database=store.database,
    )  # fmt: skip
    server, port, monitor, close = await create(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield cost_pb2_grpc.CostServiceStub(channel), f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await monitor.stop()
        await close()


@pytest.fixture
async def cost(store: LedgerStore, tmp_path: Path) -> AsyncIterator[cost_pb2_grpc.CostServiceStub]:
    async with serving(PRICES, store, tmp_path) as (stub, _):
        yield stub


async def summary(stub: cost_pb2_grpc.CostServiceStub) -> cost_pb2.GetUsageSummaryResponse:
    far = cost_pb2.GetUsageSummaryRequest()
    far.end_time.seconds = 4_000_000_000
    return await stub.GetUsageSummary(far, timeout=5)


def usd(micros: int) -> common_pb2.Money:
    return common_pb2.Money(micros=micros, currency="USD")


def cny(micros: int) -> common_pb2.Money:
    return common_pb2.Money(micros=micros, currency="CNY")


# --- RecordUsage --------------------------------------------------------------------------------


async def test_a_call_is_priced_at_the_price_of_its_time(
    cost: cost_pb2_grpc.CostServiceStub,
) -> None:
    before = await cost.RecordUsage(usage_request("a", at=T1 - 1), timeout=5)
    after = await cost.RecordUsage(usage_request("b", at=T1), timeout=5)
    assert before.cost == usd(6000)  # 1000 × 2.00 + 500 × 8.00
    assert after.cost == usd(3000)  # 1000 × 1.00 + 500 × 4.00
    assert list((await summary(cost)).totals) == [usd(9000)]


async def test_a_price_change_never_rewrites_past_records(
    store: LedgerStore, tmp_path: Path
) -> None:
    async with serving(PRICES, store, tmp_path) as (stub, _):
        assert (await stub.RecordUsage(usage_request("old", at=T1 - 1), timeout=5)).cost == usd(
            6000
        )
    # the price since the beginning is raised, over the same ledger
    raised = PRICES.replace(
        '[models.gpt-4-1]\ncached_input_per_mtok = "0.50"',
        '[models.gpt-4-1]\ninput_per_mtok = "3.00"\noutput_per_mtok = "12.00"',
    )
    assert raised != PRICES
    async with serving(raised, store, tmp_path) as (stub, _):
        again = await stub.RecordUsage(usage_request("old", at=T1 - 1), timeout=5)
        assert again.duplicate
        assert again.cost == usd(6000)  # what it was billed, not what it would cost now
        new = await stub.RecordUsage(usage_request("new", at=T1 - 1), timeout=5)
        assert new.cost == usd(9000)
        assert list((await summary(stub)).totals) == [usd(15000)]


@pytest.mark.parametrize(
    ("model", "at", "detail"),
    [
        ("unpriced", T1, 'give it input_per_mtok and output_per_mtok ("0" for a free model)'),
        ("later", T1 - 1, "its first price takes effect 2026-12-01T00:00:00Z"),
    ],
)
async def test_a_model_with_no_price_is_refused_and_nothing_is_written(
    cost: cost_pb2_grpc.CostServiceStub, model: str, at: int, detail: str
) -> None:
    err = await rpc_error(cost.RecordUsage(usage_request(model=model, at=at), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"model {model!r} has no price in effect" in (err.details() or "")
    assert detail in (err.details() or "")
    info = error_info(err)
    assert info.reason == "PRICE_NOT_FOUND"
    assert info.metadata["model"] == model
    assert (await summary(cost)).requests == 0
    if model == "later":  # once its price is in effect it is billed
        ok = await cost.RecordUsage(usage_request(model=model, at=T1), timeout=5)
        assert ok.cost == usd(1500)


async def test_cached_input_tokens_are_priced_stored_and_summed(
    cost: cost_pb2_grpc.CostServiceStub,
) -> None:
    req = usage_request("c", at=T1 - 1)
    req.usage.cached_input_tokens = 200
    resp = await cost.RecordUsage(req, timeout=5)
    assert resp.cost == usd(1600 + 100 + 4000)  # 800 × 2.00 + 200 × 0.50 + 500 × 8.00
    # after the price change the cached price is the new input price (its default)
    req = usage_request("d", at=T1)
    req.usage.cached_input_tokens = 200
    assert (await cost.RecordUsage(req, timeout=5)).cost == usd(800 + 200 + 2000)
    s = await summary(cost)
    assert s.usage == common_pb2.Usage(
        input_tokens=2000, output_tokens=1000, cached_input_tokens=400
    )
    assert s.models[0].usage.cached_input_tokens == 400
    # a retry must repeat the cached count too
    req.usage.cached_input_tokens = 100
    err = await rpc_error(cost.RecordUsage(req, timeout=5))
    assert error_info(err).reason == "REQUEST_ID_REUSED"


@pytest.mark.parametrize(("cached", "problem"), [(1001, "must not exceed"), (-1, "between 0")])
async def test_cached_input_tokens_beyond_the_input_are_invalid(
    cost: cost_pb2_grpc.CostServiceStub, cached: int, problem: str
) -> None:
    req = usage_request()
    req.usage.cached_input_tokens = cached
    err = await rpc_error(cost.RecordUsage(req, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith("usage.cached_input_tokens: ")
    assert problem in (err.details() or "")
    assert error_info(err).metadata["field"] == "usage.cached_input_tokens"
    assert (await summary(cost)).requests == 0


async def test_a_model_billed_in_another_currency_records_its_cost_there(
    cost: cost_pb2_grpc.CostServiceStub,
) -> None:
    # the brief's reseller: 1 CNY per 1 USD of list price; the official rate is 7.3
    resold = await cost.RecordUsage(usage_request("r", "resold-gpt", at=T1), timeout=5)
    official = await cost.RecordUsage(usage_request("o", "official-gpt", at=T1), timeout=5)
    assert resold.cost == cny(6000)
    assert official.cost == cny(43_800)
    s = await summary(cost)
    assert [(m.model, m.cost.currency) for m in s.models] == [
        ("official-gpt", "CNY"),
        ("resold-gpt", "CNY"),
    ]
    assert list(s.totals) == [cny(49_800)]


# --- ListPrices ----------------------------------------------------------------------------------


def rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def price_row(p: cost_pb2.Price) -> tuple[Any, ...]:
    start = p.effective_from.seconds if p.HasField("effective_from") else None
    return (
        p.model, p.input_micros_per_mtok, p.cached_input_micros_per_mtok,
        p.output_micros_per_mtok, p.currency, start, p.billing_currency, p.billing_rate,
    )  # fmt: skip


async def test_list_prices_shows_the_price_in_effect_now_or_the_history(
    store: LedgerStore, tmp_path: Path
) -> None:
    now = int(time.time())
    past, future = now - 86_400, now + 86_400
    text = f"""
    [models.gpt-4-1]
    cached_input_per_mtok = "0.50"
    [[models.gpt-4-1.prices]]
    effective_from = "{rfc3339(past)}"
    input_per_mtok = "1.75"
    output_per_mtok = "7.00"
    [[models.gpt-4-1.prices]]
    effective_from = "{rfc3339(future)}"
    input_per_mtok = "1.50"
    output_per_mtok = "6.00"
    cached_input_per_mtok = "0.375"
    [providers.reseller]
    base_url = "https://reseller.example/v1"
    billing_currency = "CNY"
    billing_rate = "1"
    [models.resold-gpt]
    provider = "reseller"
    input_per_mtok = "2.00"
    output_per_mtok = "8.00"
    [models.unpriced]
    provider = "openai"
    """
    async with serving(text, store, tmp_path) as (stub, _):
        now_only = await stub.ListPrices(cost_pb2.ListPricesRequest(), timeout=5)
        rows = {p.model: price_row(p) for p in now_only.prices}
        assert "unpriced" not in rows  # no price in effect: left out, never shown as 0
        assert rows["gpt-4.1"] == ("gpt-4.1", 1_750_000, 1_750_000, 7_000_000, "USD", past, "", "")
        assert rows["resold-gpt"] == (
            "resold-gpt", 2_000_000, 2_000_000, 8_000_000, "USD", None, "CNY", "1",
        )  # fmt: skip
        assert rows["profanity-check"][1:4] == (0, 0, 0)
        assert [p.model for p in now_only.prices] == sorted(rows)

        one = await stub.ListPrices(
            cost_pb2.ListPricesRequest(model="gpt-4.1", include_history=True), timeout=5
        )
        assert [price_row(p) for p in one.prices] == [
            ("gpt-4.1", 2_000_000, 500_000, 8_000_000, "USD", None, "", ""),
            ("gpt-4.1", 1_750_000, 1_750_000, 7_000_000, "USD", past, "", ""),
            ("gpt-4.1", 1_500_000, 375_000, 6_000_000, "USD", future, "", ""),
        ]
        everything = await stub.ListPrices(
            cost_pb2.ListPricesRequest(include_history=True), timeout=5
        )
        assert [p.model for p in everything.prices].count("gpt-4.1") == 3
        assert "unpriced" not in {p.model for p in everything.prices}

        err = await rpc_error(stub.ListPrices(cost_pb2.ListPricesRequest(model="gpt-9"), timeout=5))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(err).reason == "MODEL_NOT_FOUND"
        err = await rpc_error(
            stub.ListPrices(cost_pb2.ListPricesRequest(model="x" * 129), timeout=5)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(err).metadata["field"] == "model"


# --- EstimateCost ------------------------------------------------------------------------------


def estimate_request(
    model: str = "resold-gpt",
    input_tokens: int = 1000,
    output_tokens: int = 500,
    cached: int = 0,
    currency: str = "",
) -> cost_pb2.EstimateCostRequest:
    return cost_pb2.EstimateCostRequest(
        model=model,
        usage=common_pb2.Usage(
            input_tokens=input_tokens, output_tokens=output_tokens, cached_input_tokens=cached
        ),
        currency=currency,
    )


async def test_estimate_prices_now_converts_and_records_nothing(
    cost: cost_pb2_grpc.CostServiceStub,
) -> None:
    started = int(time.time())
    e = await cost.EstimateCost(
        estimate_request("cached-gpt", cached=200, currency="CNY"), timeout=5
    )
    assert e.model == "cached-gpt"
    assert e.cost == usd(5700) == e.list_cost  # 800 × 2.00 + 200 × 0.50 + 500 × 8.00
    assert e.billing_rate == ""
    assert e.converted == cny(41_610)  # × 7.3
    assert e.conversion_rate == "7.3"
    assert not e.HasField("official_cost")
    assert not e.HasField("saving")
    assert price_row(e.price) == (
        "cached-gpt", 2_000_000, 500_000, 8_000_000, "USD", None, "", "",
    )  # fmt: skip
    assert started <= e.priced_at.seconds <= int(time.time())
    # the other way round, by division: 5700 micro-USD / 1.08 USD per EUR = 5277.8 micro-EUR
    e = await cost.EstimateCost(
        estimate_request("cached-gpt", cached=200, currency="EUR"), timeout=5
    )
    assert e.converted == common_pb2.Money(micros=5278, currency="EUR")
    assert e.conversion_rate.startswith("0.925925925")
    # the same currency: converted as is
    e = await cost.EstimateCost(estimate_request("cached-gpt", currency="USD"), timeout=5)
    assert (e.converted, e.conversion_rate) == (usd(6000), "1")
    assert (await summary(cost)).requests == 0


async def test_estimate_for_a_reseller_shows_the_official_cost_and_the_saving(
    cost: cost_pb2_grpc.CostServiceStub,
) -> None:
    e = await cost.EstimateCost(estimate_request("resold-gpt", currency="USD"), timeout=5)
    assert e.list_cost == usd(6000)
    assert e.cost == cny(6000)  # billed 1 CNY per USD of list price
    assert e.billing_rate == "1"
    assert e.official_cost == cny(43_800)  # what the official 7.3 would have cost
    assert e.official_rate == "7.3"
    assert e.saving == cny(37_800)
    assert e.converted == usd(822)  # 6000 CNY-micros / 7.3 = 821.9
    assert (e.price.billing_currency, e.price.billing_rate) == ("CNY", "1")
    # billed at the official rate: nothing to compare with
    e = await cost.EstimateCost(estimate_request("official-gpt"), timeout=5)
    assert e.cost == cny(43_800)
    assert e.billing_rate == "7.3"
    assert not e.HasField("official_cost")
    assert not e.HasField("converted")


def _usage(**kw: int) -> Callable[[cost_pb2.EstimateCostRequest], None]:
    def apply(req: cost_pb2.EstimateCostRequest) -> None:
        for k, v in kw.items():
            setattr(req.usage, k, v)

    return apply


def _set(**kw: Any) -> Callable[[cost_pb2.EstimateCostRequest], None]:
    def apply(req: cost_pb2.EstimateCostRequest) -> None:
        for k, v in kw.items():
            if v is None:
                req.ClearField(k)
            else:
                setattr(req, k, v)

    return apply


@pytest.mark.parametrize(
    ("change", "code", "reason", "field"),
    [
        (_set(model=""), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "model"),
        (_set(model="m\n"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "model"),
        (_set(usage=None), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "usage"),
        (
            _usage(input_tokens=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
            "usage.input_tokens",
        ),
        (
            _usage(output_tokens=10**12),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
            "usage.output_tokens",
        ),
        (
            _usage(cached_input_tokens=1001),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
            "usage.cached_input_tokens",
        ),
        (_set(currency="usd"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "currency"),
        (_set(currency="DOLLARS"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "currency"),
        (_set(currency="JPY"), grpc.StatusCode.NOT_FOUND, "EXCHANGE_RATE_NOT_FOUND", "currency"),
        (_set(model="gpt-9"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", None),
        (_set(model="unpriced"), grpc.StatusCode.FAILED_PRECONDITION, "PRICE_NOT_FOUND", None),
    ],
)
async def test_bad_estimates_name_what_is_wrong(
    cost: cost_pb2_grpc.CostServiceStub,
    change: Callable[[cost_pb2.EstimateCostRequest], None],
    code: grpc.StatusCode,
    reason: str,
    field: str | None,
) -> None:
    req = estimate_request()
    change(req)
    err = await rpc_error(cost.EstimateCost(req, timeout=5))
    assert err.code() == code
    info = error_info(err)
    assert info.reason == reason
    if field is not None:
        assert (err.details() or "").startswith(f"{field}: ")
        assert info.metadata["field"] == field


async def test_future_price_shows_up_in_the_estimate_once_in_effect(
    store: LedgerStore, tmp_path: Path
) -> None:
    """The price an estimate uses is the one in effect at the moment it is asked."""
    soon = datetime.now(UTC) + timedelta(seconds=1)
    text = f"""
    [[models.deepseek-v3-2.prices]]
    effective_from = "{soon.isoformat()}"
    input_per_mtok = "0.28"
    output_per_mtok = "0.84"
    """
    async with serving(text, store, tmp_path) as (stub, _):
        first = await stub.EstimateCost(estimate_request("deepseek-v3.2"), timeout=5)
        assert first.cost == usd(350)
        assert not first.price.HasField("effective_from")
        while datetime.now(UTC) < soon:
            await asyncio.sleep(0.05)
        later = await stub.EstimateCost(estimate_request("deepseek-v3.2"), timeout=5)
        assert later.cost == usd(700)
        assert later.price.effective_from.ToDatetime(UTC) == soon


# --- quorum cost estimate ----------------------------------------------------------------------


async def quorum(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the ``quorum`` command in a thread (the server shares this event loop)."""
    with pytest.raises(SystemExit) as info:
        await asyncio.to_thread(cli.main, list(argv))
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


async def test_cli_estimate_prints_the_cost_the_official_cost_and_the_saving(
    store: LedgerStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(PRICES, store, tmp_path) as (_, address):
        args = ("--input-tokens", "1000", "--output-tokens", "500", "--cost", address)
        code, out, err = await quorum(
            capsys, "cost", "estimate", "--model", "resold-gpt", "--currency", "usd", *args
        )
        assert (code, err) == (0, "")
        assert out.splitlines() == [
            "resold-gpt: the price since the beginning, per million tokens: input 2.000000 USD, "
            "cached input 2.000000 USD, output 8.000000 USD",
            "  cost: 0.006000 CNY (list price 0.006000 USD, billed at the provider's rate of 1 "
            "CNY per USD)",
            "  at the official rate (7.3 CNY per USD) it would be 0.043800 CNY: saving "
            "0.037800 CNY",
            "  in USD: 0.000822 USD at the official rate (0.1369863 USD per CNY)",
        ]
        code, out, _ = await quorum(
            capsys, "cost", "estimate", "--model", "cached-gpt", "--cached-input-tokens", "200",
            *args,
        )  # fmt: skip
        assert code == 0
        assert out.splitlines()[1] == "  cost: 0.005700 USD"


async def test_cli_estimate_json_has_every_field(
    store: LedgerStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(PRICES, store, tmp_path) as (_, address):
        code, out, _ = await quorum(
            capsys, "cost", "estimate", "--model", "cached-gpt", "--input-tokens", "1000",
            "--output-tokens", "500", "--cached-input-tokens", "200", "--json", "--cost", address,
        )  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert doc["model"] == "cached-gpt"
    assert doc["cost"] == {"micros": "5700", "currency": "USD"}
    assert doc["listCost"] == doc["cost"]
    # empty and zero fields are printed, not left out
    assert doc["billingRate"] == "" and doc["officialRate"] == "" and doc["conversionRate"] == ""
    assert doc["price"]["billingCurrency"] == "" and doc["price"]["billingRate"] == ""
    assert doc["price"]["cachedInputMicrosPerMtok"] == "500000"
    assert "effectiveFrom" not in doc["price"]  # a message field with presence: unset
    assert "officialCost" not in doc and "converted" not in doc


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "gpt-9"], "error: NOT_FOUND: unknown model 'gpt-9'"),
        (
            ["--model", "cached-gpt", "--input-tokens", "-1"],
            "error: INVALID_ARGUMENT: usage.input_tokens: must be between 0 and",
        ),
        (
            ["--model", "cached-gpt", "--cached-input-tokens", "2000"],
            "error: INVALID_ARGUMENT: usage.cached_input_tokens: must not exceed",
        ),
        (
            ["--model", "cached-gpt", "--currency", "jpy"],
            "error: NOT_FOUND: currency: no exchange rate converts USD",
        ),
        (
            ["--model", "unpriced"],
            "error: FAILED_PRECONDITION: model 'unpriced' has no price in effect",
        ),
    ],
)
async def test_cli_estimate_errors_name_what_is_wrong(
    store: LedgerStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    async with serving(PRICES, store, tmp_path) as (_, address):
        base = {"--input-tokens": "1000", "--output-tokens": "500"}
        for flag, value in zip(argv[::2], argv[1::2], strict=True):
            base[flag] = value
        flat = [x for kv in base.items() for x in kv]
        code, out, err = await quorum(capsys, "cost", "estimate", *flat, "--cost", address)
    assert (code, out) == (1, "")
    assert err.startswith(expected), err


def test_cli_estimate_refuses_what_is_not_a_count(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("ten", "1.5", str(2**63)):
        with pytest.raises(SystemExit) as info:
            cli.main(
                ["cost", "estimate", "--model", "m", "--input-tokens", bad, "--output-tokens", "1"]
            )
        assert info.value.code == 2
        assert "--input-tokens" in capsys.readouterr().err


async def test_a_budget_in_another_currency_counts_costs_at_the_official_rate(cost) -> None:
    """A CNY budget over USD-priced calls: spent and reserved are converted at the official
    rate (7.3 CNY per USD in this configuration), and the hard limit holds in CNY. The calls
    are priced now, after T1, at the dated price of 1.00 / 4.00 USD per MTok."""
    await cost.SetBudget(
        cost_pb2.SetBudgetRequest(
            budget=cost_pb2.Budget(
                tenant="acme", limit=common_pb2.Money(micros=50_000, currency="CNY")
            )
        ),
        timeout=5,
    )
    # 3,000 micro-USD at the price since T1
    rec = usage_request("a", input_tokens=1000, output_tokens=500)
    rec.tenant = "acme"
    await cost.RecordUsage(rec, timeout=5)
    (s,) = (await cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="acme"))).budgets
    assert (s.spent.micros, s.spent.currency) == (21_900, "CNY")
    reserve = cost_pb2.ReserveRequest(
        request_id="r", tenant="acme", model="gpt-4.1", input_tokens=1000, max_output_tokens=500
    )
    r = await cost.Reserve(reserve, timeout=5)
    assert (r.amount.micros, r.amount.currency) == (3_000, "USD")
    (s,) = (await cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="acme"))).budgets
    assert s.reserved.micros == 21_900
    reserve.request_id = "r2"  # 21,900 + 21,900 + 21,900 CNY > 50,000 CNY
    err = await rpc_error(cost.Reserve(reserve, timeout=5))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err).metadata["requested_micros"] == "21900"


# --- GetUsageReport: billed, official, saving ----------------------------------------------------

T2 = 1_797_292_800  # 2026-12-15T00:00:00Z: the official USD -> CNY rate becomes 7.0

REPORTED = (
    PRICES
    + """
[[exchange_rates]]
from = "USD"
to = "CNY"
rate = "7.0"
effective_from = "2026-12-15T00:00:00Z"

[models.resold-gbp]
provider = "reseller"
currency = "GBP"
input_per_mtok = "2.00"
output_per_mtok = "8.00"
"""
)


async def record_the_reported_calls(stub: cost_pb2_grpc.CostServiceStub) -> None:
    """The reseller (1 CNY per list USD) before and after the official rate changes, a model
    billed at the official rate, one listed in GBP that no official rate converts, and a USD
    call; 1,000 input and 500 output tokens each (a list cost of 6,000 micro-units)."""
    for rid, model, at in (
        ("r1", "resold-gpt", T1), ("r2", "resold-gpt", T2), ("o1", "official-gpt", T1),
        ("g1", "resold-gbp", T1), ("u1", "gpt-4.1", T1 - 1),
    ):  # fmt: skip
        await stub.RecordUsage(usage_request(rid, model, at=at), timeout=5)


def report_request(**kw: Any) -> cost_pb2.GetUsageReportRequest:
    req = cost_pb2.GetUsageReportRequest(**kw)
    req.end_time.seconds = 4_000_000_000
    return req


def money_of(row: cost_pb2.ReportRow) -> tuple[Any, ...]:
    official = row.official_cost if row.HasField("official_cost") else None
    saving = row.saving if row.HasField("saving") else None
    return (row.key, row.cost, official, saving, row.requests_without_official_cost)


async def test_the_report_shows_what_was_billed_what_the_official_rate_costs_and_the_saving(
    store: LedgerStore, tmp_path: Path
) -> None:
    async with serving(REPORTED, store, tmp_path) as (stub, _):
        await record_the_reported_calls(stub)
        by_model = await stub.GetUsageReport(report_request(), timeout=5)
        assert [money_of(r) for r in by_model.rows] == [
            ("gpt-4.1", usd(6000), usd(6000), usd(0), 0),
            ("official-gpt", cny(43_800), cny(43_800), cny(0), 0),  # billed at the official
            ("resold-gbp", cny(6000), None, None, 1),  # no official GBP rate: unknown, not 0
            # 43,800 at 7.3 before 2026-12-15, 42,000 at 7.0 from then on
            ("resold-gpt", cny(12_000), cny(85_800), cny(73_800), 0),
        ]
        assert list(by_model.totals) == [cny(61_800), usd(6000)]
        assert [money_of(t) for t in by_model.currency_totals] == [
            ("CNY", cny(61_800), None, None, 1),
            ("USD", usd(6000), usd(6000), usd(0), 0),
        ]
        assert [t.requests for t in by_model.currency_totals] == [4, 1]
        # the official rate of each call's own day
        by_day = await stub.GetUsageReport(
            report_request(model="resold-gpt", group_by=cost_pb2.REPORT_GROUPING_DAY), timeout=5
        )
        assert [money_of(r) for r in by_day.rows] == [
            ("2026-12-01", cny(6000), cny(43_800), cny(37_800), 0),
            ("2026-12-15", cny(6000), cny(42_000), cny(36_000), 0),
        ]
        # a group holding one call without an official cost has none at all
        (cny_row, usd_row) = (
            await stub.GetUsageReport(
                report_request(group_by=cost_pb2.REPORT_GROUPING_TENANT), timeout=5
            )
        ).rows
        assert money_of(cny_row) == ("default", cny(61_800), None, None, 1)
        assert money_of(usd_row) == ("default", usd(6000), usd(6000), usd(0), 0)
        # the figures are the ones recorded with each call: a retry changes nothing
        again = await stub.RecordUsage(usage_request("r1", "resold-gpt", at=T1), timeout=5)
        assert again.duplicate
        assert await stub.GetUsageReport(report_request(), timeout=5) == by_model


async def test_a_reports_official_costs_are_those_recorded_with_the_calls(
    store: LedgerStore, tmp_path: Path
) -> None:
    """As the cost a record keeps, its official cost is what the rates of its time gave when it
    was recorded: changing the configured rates later rewrites no report."""
    async with serving(REPORTED, store, tmp_path) as (stub, _):
        await stub.RecordUsage(usage_request("r1", "resold-gpt", at=T1), timeout=5)
    revised = REPORTED.replace('rate = "7.3"', 'rate = "8.0"')
    assert revised != REPORTED
    async with serving(revised, store, tmp_path) as (stub, _):
        await stub.RecordUsage(usage_request("r3", "resold-gpt", at=T1), timeout=5)
        (row,) = (await stub.GetUsageReport(report_request(), timeout=5)).rows
        assert money_of(row) == ("resold-gpt", cny(12_000), cny(91_800), cny(79_800), 0)


async def test_cli_report_shows_the_official_cost_and_the_saving_as_a_table_csv_and_json(
    store: LedgerStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(REPORTED, store, tmp_path) as (stub, address):
        await record_the_reported_calls(stub)
        # and a simulated call: shown apart, in none of the real rows and totals
        simulated = usage_request("s1", "gpt-4.1", at=T1 - 1, simulated=True)
        await stub.RecordUsage(simulated, timeout=5)
        args = ("cost", "report", "--until", "2030-01-01", "--cost", address)
        code, out, err = await quorum(capsys, *args)
        assert (code, err) == (0, "")
        assert out.splitlines() == [
            "model        requests         in        out          cost      official"
            "        saving",
            "gpt-4.1             1       1000        500  0.006000 USD  0.006000 USD"
            "  0.000000 USD",
            "official-gpt        1       1000        500  0.043800 CNY  0.043800 CNY"
            "  0.000000 CNY",
            "resold-gbp          1       1000        500  0.006000 CNY       unknown"
            "       unknown",
            "resold-gpt          2       2000       1000  0.012000 CNY  0.085800 CNY"
            "  0.073800 CNY",
            "total CNY           4       4000       2000  0.061800 CNY       unknown"
            "       unknown",
            "total USD           1       1000        500  0.006000 USD  0.006000 USD"
            "  0.000000 USD",
            "simulated calls (answered by the provider simulator: no money spent, no budget "
            "counts them; cost is what they would have cost):",
            "gpt-4.1             1       1000        500  0.006000 USD  0.006000 USD"
            "  0.000000 USD",
            "total               1       1000        500  0.006000 USD  0.006000 USD"
            "  0.000000 USD",
            "1 of the requests have no official cost (no official exchange rate converted their "
            "list price at their time, or they were recorded before the ledger kept official "
            "costs): official and saving are unknown for their rows",
        ]  # fmt: skip
        code, out, _ = await quorum(capsys, *args, "--csv")
        assert code == 0
        assert out.splitlines() == [
            "model,currency,requests,input_tokens,output_tokens,cost,estimated_requests,"
            "official_cost,saving,requests_without_official_cost,simulated",
            "gpt-4.1,USD,1,1000,500,0.006000,0,0.006000,0.000000,0,false",
            "official-gpt,CNY,1,1000,500,0.043800,0,0.043800,0.000000,0,false",
            "resold-gbp,CNY,1,1000,500,0.006000,0,,,1,false",  # empty cells, not 0
            "resold-gpt,CNY,2,2000,1000,0.012000,0,0.085800,0.073800,0,false",
            "gpt-4.1,USD,1,1000,500,0.006000,0,0.006000,0.000000,0,true",
        ]
        code, out, _ = await quorum(capsys, *args, "--json")
        assert code == 0
        doc = json.loads(out)
        rows = {r["key"]: r for r in doc["rows"]}
        assert rows["resold-gpt"]["officialCost"] == {"micros": "85800", "currency": "CNY"}
        assert rows["resold-gpt"]["saving"] == {"micros": "73800", "currency": "CNY"}
        assert rows["resold-gpt"]["requestsWithoutOfficialCost"] == "0"
        unknown = rows["resold-gbp"]
        assert "officialCost" not in unknown and "saving" not in unknown  # unset, not 0
        assert unknown["requestsWithoutOfficialCost"] == "1"
        assert [t["key"] for t in doc["currencyTotals"]] == ["CNY", "USD"]
        assert doc["requests"] == "5" and doc["simulatedRequests"] == "1"
        assert [(r["key"], r["requests"]) for r in doc["simulatedRows"]] == [("gpt-4.1", "1")]
        assert doc["simulatedCurrencyTotals"][0]["cost"] == {"micros": "6000", "currency": "USD"}


# --- SetBudget: a currency the price book can count the budget's calls in -----------------------


def budget_in(currency: str, tenant: str = "acme", model: str = "") -> cost_pb2.SetBudgetRequest:
    return cost_pb2.SetBudgetRequest(
        budget=cost_pb2.Budget(
            tenant=tenant, model=model, limit=common_pb2.Money(micros=10**9, currency=currency)
        )
    )


@pytest.mark.parametrize(
    ("currency", "model", "converts", "blocked"),
    [
        # well formed, but no rate knows it: every Reserve would fail NO_EXCHANGE_RATE
        ("XYZ", "", "USD", None),  # the first model by name: each bills USD or CNY
        ("XYZ", "gpt-4.1", "USD", "gpt-4.1"),
        # EUR converts into USD, but nothing converts the CNY that two models bill in
        ("EUR", "", "CNY", "official-gpt"),
        ("EUR", "resold-gpt", "CNY", "resold-gpt"),
    ],
)
async def test_a_budget_its_calls_could_not_be_counted_in_is_refused_and_nothing_written(
    cost: cost_pb2_grpc.CostServiceStub,
    currency: str,
    model: str,
    converts: str,
    blocked: str | None,
) -> None:
    await cost.SetBudget(budget_in("USD", model=model), timeout=5)
    err = await rpc_error(cost.SetBudget(budget_in(currency, model=model), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err)
    assert info.reason == "INVALID_FIELD"
    blocked = blocked or info.metadata["model"]
    assert dict(info.metadata) == {
        "field": "budget.limit.currency", "from": converts, "to": currency, "model": blocked,
    }  # fmt: skip
    details = err.details() or ""
    assert details.startswith(
        f"budget.limit.currency: no exchange rate converts {converts} (the billing currency of "
        f"{blocked}) into {currency} at "
    ), details
    # the budget it would have replaced is as it was, and a new tenant got none
    (s,) = (await cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(), timeout=5)).budgets
    assert (s.budget.limit.currency, s.budget.model) == ("USD", model)
    err = await rpc_error(cost.SetBudget(budget_in(currency, "globex", model), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = await cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="globex"))
    assert list(status.budgets) == []
    reserve = cost_pb2.ReserveRequest(
        request_id="g", tenant="globex", model="gpt-4.1", input_tokens=10, max_output_tokens=10
    )
    assert (await cost.Reserve(reserve, timeout=5)).reservation_id == ""  # not blocked


async def test_a_budget_in_a_currency_every_covered_call_converts_into_is_set(
    cost: cost_pb2_grpc.CostServiceStub,
) -> None:
    # EUR for a USD model only: EUR -> USD 1.08 converts it (the other way round, by division)
    s = (await cost.SetBudget(budget_in("EUR", model="gpt-4.1"), timeout=5)).status
    assert (s.budget.limit.currency, s.budget.model) == ("EUR", "gpt-4.1")
    reserve = cost_pb2.ReserveRequest(
        request_id="r", tenant="acme", model="gpt-4.1", input_tokens=1000, max_output_tokens=500
    )
    assert (await cost.Reserve(reserve, timeout=5)).reservation_id.startswith("rsv_")
    # CNY tenant-wide: every model bills USD (7.3 CNY per USD) or CNY
    s = (await cost.SetBudget(budget_in("CNY", tenant="globex"), timeout=5)).status
    assert s.budget.limit.currency == "CNY"
