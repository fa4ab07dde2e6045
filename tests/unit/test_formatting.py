from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2
from quorum.formatting import (
    format_completion,
    format_estimate,
    format_moderation,
    format_report,
    format_usage,
)
from quorum.protoconv import format_money
from quorum.router.v1 import router_pb2
from quorum.voter.v1 import voter_pb2


def test_money_is_printed_exactly():
    assert format_money(common_pb2.Money(micros=6000, currency="USD")) == "0.006000 USD"
    assert format_money(common_pb2.Money(micros=-1_250_000, currency="EUR")) == "-1.250000 EUR"


def test_simulated_answers_say_so():
    resp = router_pb2.CompleteResponse(
        model="gpt-4.1", provider="simulator", simulated=True, route_reason="default model",
        text="[simulated gpt-4.1] hi", usage_recorded=True,
        cost=common_pb2.Money(micros=10, currency="USD"),
    )  # fmt: skip
    out = format_completion(resp)
    assert "SIMULATED" in out and "0.000010 USD" in out and "default model" in out
    assert "queued" in format_completion(router_pb2.CompleteResponse(usage_recorded=False))


def test_every_vote_is_shown_with_abstentions():
    resp = voter_pb2.ModerateResponse(
        is_safe=False,
        requires_review=True,
        reasons=["only 1 of 2 models voted; need 2"],
        votes=[
            voter_pb2.ModelVote(model="a", provider="triton", status=voter_pb2.VOTE_STATUS_OK),
            voter_pb2.ModelVote(
                model="b", provider="x", status=voter_pb2.VOTE_STATUS_TIMEOUT, error="slow"
            ),
        ],
    )
    out = format_moderation(resp, "some text")
    assert "UNSAFE" in out and "requires review" in out
    assert "- a [triton] unsafe" in out and "- b [x] abstained (timeout): slow" in out


def test_usage_table_and_empty_ledger():
    assert format_usage(cost_pb2.GetUsageSummaryResponse()) == "no usage recorded yet"
    out = format_usage(
        cost_pb2.GetUsageSummaryResponse(
            models=[cost_pb2.ModelUsage(model="m", requests=2,
                                        cost=common_pb2.Money(micros=5, currency="USD"))],
            requests=2,
            totals=[common_pb2.Money(micros=5, currency="USD")],
        )
    )  # fmt: skip
    assert "m " in out and "total" in out and "0.000005 USD" in out
    assert "prompt caches" not in out
    cached = format_usage(
        cost_pb2.GetUsageSummaryResponse(
            models=[cost_pb2.ModelUsage(model="m", requests=1)],
            requests=1,
            usage=common_pb2.Usage(input_tokens=1000, cached_input_tokens=600),
        )
    )
    assert "600 of the input tokens came from the providers' prompt caches" in cached


def test_replayed_and_estimated_answers_say_so():
    plain = format_completion(router_pb2.CompleteResponse(usage_recorded=True))
    assert "replayed" not in plain and "estimated" not in plain
    out = format_completion(
        router_pb2.CompleteResponse(request_id="r9", replayed=True, usage_estimated=True)
    )
    assert "replayed: the stored answer to request r9" in out
    assert "estimated: the provider reported no usage" in out
    usage = format_usage(
        cost_pb2.GetUsageSummaryResponse(
            models=[cost_pb2.ModelUsage(model="m", requests=3, estimated_requests=1)],
            requests=3,
            estimated_requests=1,
        )
    )
    assert "1 of the requests have estimated token counts" in usage


def test_an_estimate_dearer_than_the_official_rate_says_so() -> None:
    money = common_pb2.Money
    resp = cost_pb2.EstimateCostResponse(
        model="m",
        price=cost_pb2.Price(
            model="m",
            input_micros_per_mtok=1_000_000,
            output_micros_per_mtok=2_000_000,
            cached_input_micros_per_mtok=1_000_000,
            currency="USD",
            billing_currency="CNY",
            billing_rate="8",
        ),
        cost=money(micros=8000, currency="CNY"),
        list_cost=money(micros=1000, currency="USD"),
        billing_rate="8",
        official_cost=money(micros=7300, currency="CNY"),
        saving=money(micros=-700, currency="CNY"),
        official_rate="7.30",
    )
    resp.price.effective_from.FromJsonString("2026-12-01T00:00:00Z")
    lines = format_estimate(resp).splitlines()
    assert lines[0].startswith("m: the price since 2026-12-01T00:00:00Z, per million tokens:")
    assert lines[1] == (
        "  cost: 0.008000 CNY (list price 0.001000 USD, billed at the provider's rate of 8 CNY "
        "per USD)"
    )
    assert lines[2].endswith("it would be 0.007300 CNY: costing more by 0.000700 CNY")
    assert len(lines) == 3


def usd(micros: int) -> common_pb2.Money:
    return common_pb2.Money(micros=micros, currency="USD")


def test_a_report_in_one_currency_has_one_total_line_and_says_what_is_unknown():
    assert format_report(cost_pb2.GetUsageReportResponse(), "model") == "no usage in that range"
    known = cost_pb2.ReportRow(
        key="gpt-4.1", requests=2, cost=usd(12), official_cost=usd(12), saving=usd(0)
    )
    unknown = cost_pb2.ReportRow(key="resold", requests=1, cost=usd(5),
                                 requests_without_official_cost=1)  # fmt: skip
    total = cost_pb2.ReportRow(key="USD", requests=3, cost=usd(17),
                               requests_without_official_cost=1)  # fmt: skip
    resp = cost_pb2.GetUsageReportResponse(rows=[known, unknown], currency_totals=[total])
    lines = format_report(resp, "tenant").splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["tenant", "gpt-4.1", "resold", "total"]
    assert lines[1].split()[-6:] == ["0.000012", "USD", "0.000012", "USD", "0.000000", "USD"]
    assert lines[2].split()[-4:] == ["0.000005", "USD", "unknown", "unknown"]
    assert lines[3].split()[1:] == ["3", "0", "0", "0.000017", "USD", "unknown", "unknown"]
    assert lines[4].startswith("1 of the requests have no official cost")
    assert "official cost" not in format_report(
        cost_pb2.GetUsageReportResponse(rows=[known], currency_totals=[]), "model"
    )


def test_simulated_usage_is_shown_apart_from_real_spend():
    sim = cost_pb2.ModelUsage(
        model="sim-chat", requests=2, usage=common_pb2.Usage(input_tokens=7, output_tokens=3),
        cost=usd(40),
    )  # fmt: skip
    only = format_usage(
        cost_pb2.GetUsageSummaryResponse(
            simulated_models=[sim], simulated_requests=2, simulated_totals=[usd(40)]
        )
    ).splitlines()
    assert only[1].split() == ["total", "0", "0", "0", "-"]  # no real spend
    assert only[2].startswith("simulated calls (answered by the provider simulator")
    assert only[3].split() == ["sim-chat", "2", "7", "3", "0.000040", "USD"]
    assert only[4].split() == ["simulated", "total", "2", "7", "3", "0.000040", "USD"]


def test_a_report_shows_the_simulated_rows_after_the_real_total():
    real = cost_pb2.ReportRow(key="acme", requests=1, cost=usd(12), official_cost=usd(12),
                              saving=usd(0))  # fmt: skip
    sim = cost_pb2.ReportRow(key="acme", requests=4, cost=usd(50), official_cost=usd(50),
                             saving=usd(0))  # fmt: skip
    resp = cost_pb2.GetUsageReportResponse(
        rows=[real], currency_totals=[replace_key(real, "USD")],
        simulated_rows=[sim], simulated_currency_totals=[replace_key(sim, "USD")],
    )  # fmt: skip
    lines = format_report(resp, "tenant").splitlines()
    assert [line.split()[0] for line in lines] == [
        "tenant", "acme", "total", "simulated", "acme", "total",
    ]  # fmt: skip
    assert lines[2].split()[1:4] == ["1", "0", "0"]  # the real total: the real call only
    assert lines[5].split()[1:4] == ["4", "0", "0"]
    none_real = cost_pb2.GetUsageReportResponse(simulated_rows=[sim])
    assert format_report(none_real, "tenant").splitlines()[1] == "(no real calls in that range)"


def replace_key(row: cost_pb2.ReportRow, key: str) -> cost_pb2.ReportRow:
    out = cost_pb2.ReportRow()
    out.CopyFrom(row)
    out.key = key
    return out
