"""Human-readable summaries of Quorum responses (the CLI and the demo print these)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from quorum import protoconv
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2
from quorum.router.v1 import router_pb2
from quorum.voter.v1 import voter_pb2

_STATUS = {
    voter_pb2.VOTE_STATUS_OK: "voted",
    voter_pb2.VOTE_STATUS_ERROR: "abstained (error)",
    voter_pb2.VOTE_STATUS_TIMEOUT: "abstained (timeout)",
    voter_pb2.VOTE_STATUS_SKIPPED: "skipped",
}


def _scores(items: Any) -> str:
    d = protoconv.scores_dict(items)
    return ", ".join(f"{k} {v:.2f}" for k, v in d.items()) or "-"


def format_moderation(resp: voter_pb2.ModerateResponse, text: str | None = None) -> str:
    lines = []
    if text is not None:
        shown = text if len(text) <= 70 else text[:67] + "..."
        lines.append(f"text: {shown!r}")
    verdict = "SAFE" if resp.is_safe else "UNSAFE"
    review = "  (requires review)" if resp.requires_review else ""
    lines.append(
        f"verdict: {verdict}  confidence {resp.confidence:.2f}{review}  [{resp.latency_ms} ms]"
    )
    if resp.categories:
        lines.append(f"  categories: {_scores(resp.categories)}")
    for r in resp.reasons:
        lines.append(f"  reason: {r}")
    for v in resp.votes:
        tag = " (simulated)" if v.simulated else ""
        if v.status == voter_pb2.VOTE_STATUS_OK:
            said = "safe" if v.is_safe else "unsafe"
            lines.append(
                f"  - {v.model} [{v.provider}{tag}] {said}, confidence {v.confidence:.2f}, "
                f"weight {v.weight:g}, {v.latency_ms} ms; {_scores(v.categories)}"
            )
        else:
            lines.append(
                f"  - {v.model} [{v.provider}{tag}] {_STATUS.get(v.status, '?')}: {v.error}"
            )
    return "\n".join(lines)


def format_completion(resp: router_pb2.CompleteResponse, *, with_text: bool = True) -> str:
    sim = "  (SIMULATED answer: no API key for this provider)" if resp.simulated else ""
    cost = protoconv.format_money(resp.cost)
    recorded = "" if resp.usage_recorded else " (usage queued for the cost service)"
    estimated = " (estimated: the provider reported no usage)" if resp.usage_estimated else ""
    lines = [
        f"model: {resp.model} [{resp.provider}]{sim}",
        f"  why: {resp.route_reason}",
        f"  tokens: {resp.usage.input_tokens} in / {resp.usage.output_tokens} out{estimated}; "
        f"cost {cost}{recorded}; latency {resp.latency_ms} ms",
    ]
    if resp.replayed:
        lines.append(
            f"  replayed: the stored answer to request {resp.request_id} (no new model call)"
        )
    if resp.HasField("input_moderation"):
        m = resp.input_moderation
        votes = sum(v.status == voter_pb2.VOTE_STATUS_OK for v in m.votes)
        lines.append(
            f"  input moderation: {'safe' if m.is_safe else 'unsafe'} "
            f"({votes} vote{'s' if votes != 1 else ''}, {m.latency_ms} ms)"
        )
    if resp.HasField("output_moderation"):
        m = resp.output_moderation
        lines.append(f"  output moderation: {'safe' if m.is_safe else 'unsafe'}")
    if with_text:
        lines.append(f"  answer: {resp.text}")
    return "\n".join(lines)


#: the heading of the simulated calls' part of a usage summary or report
SIMULATED_HEADING = (
    "simulated calls (answered by the provider simulator: no money spent, no budget counts "
    "them; cost is what they would have cost):"
)


def _usage_line(label: str, requests: int, usage: common_pb2.Usage, cost: str) -> str:
    return f"{label:<20} {requests:>8} {usage.input_tokens:>8} {usage.output_tokens:>8}  {cost}"


def format_usage(resp: cost_pb2.GetUsageSummaryResponse) -> str:
    """Real usage and spend per model with its total, then the simulated calls apart."""
    if not resp.models and not resp.simulated_models:
        return "no usage recorded yet"
    money = protoconv.format_money
    lines = [f"{'model':<20} {'requests':>8} {'in':>8} {'out':>8}  cost"]
    for m in resp.models:
        lines.append(_usage_line(m.model, m.requests, m.usage, money(m.cost)))
    totals = "; ".join(money(t) for t in resp.totals) or "-"
    lines.append(_usage_line("total", resp.requests, resp.usage, totals))
    if resp.simulated_models:
        lines.append(SIMULATED_HEADING)
        for m in resp.simulated_models:
            lines.append(_usage_line(m.model, m.requests, m.usage, money(m.cost)))
        simulated = common_pb2.Usage(
            input_tokens=sum(m.usage.input_tokens for m in resp.simulated_models),
            output_tokens=sum(m.usage.output_tokens for m in resp.simulated_models),
        )
        lines.append(
            _usage_line(
                "simulated total",
                resp.simulated_requests,
                simulated,
                "; ".join(money(t) for t in resp.simulated_totals),
            )
        )
    if resp.usage.cached_input_tokens:
        lines.append(
            f"{resp.usage.cached_input_tokens} of the input tokens came from the providers' "
            "prompt caches (billed at the cached-input price)"
        )
    if resp.estimated_requests:
        lines.append(
            f"{resp.estimated_requests} of the requests have estimated token counts "
            "(the provider reported none, or the call was cut short)"
        )
    return "\n".join(lines)


def _budget_lines(s: cost_pb2.BudgetStatus) -> list[str]:
    b = s.budget
    scope = f"{b.tenant}" + (f" / {b.model}" if b.model else " (every model)")
    month = s.period_start.ToDatetime(tzinfo=ZoneInfo(b.time_zone or "UTC")).strftime("%Y-%m")
    kind = "alert only" if b.alert_only else "hard limit"
    days = (
        f"{s.days_left:.1f} days left at this rate" if s.HasField("days_left") else "no spend yet"
    )
    reached = [f"{a.threshold:.0%}" for a in s.alerts if a.reached]
    return [
        f"{scope}: {protoconv.format_money(s.spent)} of {protoconv.format_money(b.limit)} "
        f"({s.used:.1%}) in {month} ({b.time_zone}), {kind}",
        f"  reserved {protoconv.format_money(s.reserved)}, "
        f"remaining {protoconv.format_money(s.remaining)}",
        f"  {protoconv.format_money(s.daily_rate)} a day (budget "
        f"{protoconv.format_money(s.daily_budget)} a day); {days}; month-end projection "
        f"{protoconv.format_money(s.projected)}",
        "  alerts reached: "
        + (", ".join(reached) if reached else "none")
        + ("  EXCEEDED" if s.exceeded else ""),
    ]


def format_budgets(statuses: Sequence[cost_pb2.BudgetStatus]) -> str:
    if not statuses:
        return "no budgets"
    return "\n".join(line for s in statuses for line in _budget_lines(s))


def format_budget_event(status: cost_pb2.BudgetStatus, new_alerts: Sequence[float]) -> str:
    lines = _budget_lines(status)
    if new_alerts:
        lines.insert(0, "ALERT: reached " + ", ".join(f"{t:.0%}" for t in new_alerts))
    return "\n".join(lines)


#: shown for an official cost (and saving) that cannot be computed: never 0
UNKNOWN = "unknown"
_MONEY_HEADS = ("cost", "official", "saving")


def _report_cells(r: cost_pb2.ReportRow) -> tuple[str, str, str]:
    """The cost, the official cost and the saving of a report row, for people."""
    money = protoconv.format_money
    if not r.HasField("official_cost"):
        return money(r.cost), UNKNOWN, UNKNOWN
    return money(r.cost), money(r.official_cost), money(r.saving)


def _labelled(
    rows: Sequence[cost_pb2.ReportRow], totals: Sequence[cost_pb2.ReportRow], total: str
) -> list[tuple[str, cost_pb2.ReportRow]]:
    """The rows under their keys, then the totals (one line, or one per currency)."""
    labels = [total] if len(totals) == 1 else [f"{total} {t.key}" for t in totals]
    return [*((r.key, r) for r in rows), *zip(labels, totals, strict=True)]


def format_report(resp: cost_pb2.GetUsageReportResponse, by: str) -> str:
    """The real calls' rows and totals, then the simulated calls' apart (same columns)."""
    if not resp.rows and not resp.simulated_rows:
        return "no usage in that range"
    real = _labelled(resp.rows, resp.currency_totals, "total")
    simulated = _labelled(resp.simulated_rows, resp.simulated_currency_totals, "total")
    # one set of column widths for both parts
    every = [(key, r, _report_cells(r)) for key, r in (*real, *simulated)]
    width = max(12, *(len(key) for key, _, _ in every))
    w = [max(len(h), *(len(c[i]) for _, _, c in every)) for i, h in enumerate(_MONEY_HEADS)]
    head = "  ".join(f"{h:>{n}}" for h, n in zip(_MONEY_HEADS, w, strict=True))
    lines = [f"{by:<{width}} {'requests':>8} {'in':>10} {'out':>10}  {head}"]
    for i, (key, r, c) in enumerate(every):
        if i == 0 and not real:
            lines.append("(no real calls in that range)")
        if i == len(real):
            lines.append(SIMULATED_HEADING)
        shown = "  ".join(f"{v:>{n}}" for v, n in zip(c, w, strict=True))
        lines.append(
            f"{key:<{width}} {r.requests:>8} {r.usage.input_tokens:>10} "
            f"{r.usage.output_tokens:>10}  {shown}"
        )
    if resp.estimated_requests:
        lines.append(f"{resp.estimated_requests} of the requests have estimated token counts")
    without = sum(r.requests_without_official_cost for r in (*resp.rows, *resp.simulated_rows))
    if without:
        lines.append(
            f"{without} of the requests have no official cost (no official exchange rate "
            "converted their list price at their time, or they were recorded before the "
            f"ledger kept official costs): official and saving are {UNKNOWN} for their rows"
        )
    return "\n".join(lines)


def _rate(text: str) -> str:
    """A decimal rate for people: at most 8 significant digits ("0.13698630", "7.3")."""
    try:
        d = Decimal(text)
    except InvalidOperation:
        return text
    return format(Decimal(f"{d:.8g}").normalize(), "f")


def _per_mtok(micros: int, currency: str) -> str:
    return protoconv.format_money(common_pb2.Money(micros=micros, currency=currency))


def format_estimate(resp: cost_pb2.EstimateCostResponse) -> str:
    p = resp.price
    since = (
        "since " + p.effective_from.ToJsonString()
        if p.HasField("effective_from")
        else "since the beginning"
    )
    money = protoconv.format_money
    lines = [
        f"{resp.model}: the price {since}, per million tokens: "
        f"input {_per_mtok(p.input_micros_per_mtok, p.currency)}, "
        f"cached input {_per_mtok(p.cached_input_micros_per_mtok, p.currency)}, "
        f"output {_per_mtok(p.output_micros_per_mtok, p.currency)}",
    ]
    cost = f"  cost: {money(resp.cost)}"
    if resp.billing_rate:
        whose = "the provider's rate" if p.billing_rate else "the official rate"
        cost += (
            f" (list price {money(resp.list_cost)}, billed at {whose} of "
            f"{_rate(resp.billing_rate)} {resp.cost.currency} per {resp.list_cost.currency})"
        )
    lines.append(cost)
    if resp.HasField("official_cost"):
        saving = resp.saving
        how = "saving" if saving.micros >= 0 else "costing more by"
        amount = money(common_pb2.Money(micros=abs(saving.micros), currency=saving.currency))
        lines.append(
            f"  at the official rate ({_rate(resp.official_rate)} {resp.official_cost.currency} "
            f"per {resp.list_cost.currency}) it would be {money(resp.official_cost)}: "
            f"{how} {amount}"
        )
    if resp.HasField("converted"):
        lines.append(
            f"  in {resp.converted.currency}: {money(resp.converted)} at the official rate "
            f"({_rate(resp.conversion_rate)} {resp.converted.currency} per {resp.cost.currency})"
        )
    return "\n".join(lines)
