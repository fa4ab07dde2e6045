"""Human-readable summaries of Quorum responses (the CLI and the demo print these)."""

from __future__ import annotations

from typing import Any

from quorum import protoconv
from quorum.cost.v1 import cost_pb2
from quorum.router.v1 import router_pb2
from quorum.voter.v1 import voter_pb2

_STATUS = {
    voter_pb2.VOTE_STATUS_OK: "voted",
    voter_pb2.VOTE_STATUS_ERROR: "abstained (error)",
    voter_pb2.VOTE_STATUS_TIMEOUT: "abstained (timeout)",
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
    lines = [
        f"model: {resp.model} [{resp.provider}]{sim}",
        f"  why: {resp.route_reason}",
        f"  tokens: {resp.usage.input_tokens} in / {resp.usage.output_tokens} out; "
        f"cost {cost}{recorded}; latency {resp.latency_ms} ms",
    ]
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


def format_usage(resp: cost_pb2.GetUsageSummaryResponse) -> str:
    if not resp.models:
        return "no usage recorded yet"
    lines = [f"{'model':<20} {'requests':>8} {'in':>8} {'out':>8}  cost"]
    for m in resp.models:
        lines.append(
            f"{m.model:<20} {m.requests:>8} {m.usage.input_tokens:>8} {m.usage.output_tokens:>8}"
            f"  {protoconv.format_money(m.cost)}"
        )
    totals = "; ".join(protoconv.format_money(t) for t in resp.totals)
    lines.append(
        f"{'total':<20} {resp.requests:>8} {resp.usage.input_tokens:>8} "
        f"{resp.usage.output_tokens:>8}  {totals}"
    )
    return "\n".join(lines)
