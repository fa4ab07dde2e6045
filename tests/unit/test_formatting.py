from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2
from quorum.formatting import format_completion, format_moderation, format_usage
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
