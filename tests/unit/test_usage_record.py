"""The usage record a router or voter journals and sends: it carries cached input tokens and
whether a simulated model answered, and a journal written before either existed still reads
back."""

from __future__ import annotations

import json
from pathlib import Path

from quorum.usage import UsageRecord, replay


def test_cached_input_tokens_go_to_the_cost_service() -> None:
    rec = UsageRecord(
        "k", "gpt-4.1", 1000, 500, "router", 1_700_000_000_000_000, cached_input_tokens=600
    )
    req = rec.to_proto()
    assert (req.usage.input_tokens, req.usage.output_tokens) == (1000, 500)
    assert req.usage.cached_input_tokens == 600


def test_a_journal_from_before_cached_tokens_reads_back_with_none(tmp_path: Path) -> None:
    old = {
        "op": "usage", "request_id": "old", "model": "gpt-4.1", "input_tokens": 10,
        "output_tokens": 5, "source": "router", "occurred_at_us": 1, "estimated": False,
    }  # fmt: skip
    new = {**old, "request_id": "new", "cached_input_tokens": 8}
    journal = tmp_path / "router-usage.journal"
    journal.write_text("".join(json.dumps(x) + "\n" for x in (old, new)), encoding="utf-8")
    _, pending = replay(journal)
    assert pending["old"].cached_input_tokens == 0
    assert pending["new"].cached_input_tokens == 8


def test_a_simulated_call_is_marked_in_the_record_and_the_journal(tmp_path: Path) -> None:
    rec = UsageRecord("k", "sim-chat", 10, 5, "router", 1, simulated=True)
    assert rec.to_proto().simulated
    assert not UsageRecord("k", "sim-chat", 10, 5, "router", 1).to_proto().simulated
    old = {
        "op": "begin", "request_id": "old", "model": "gpt-4.1", "input_tokens": 10,
        "output_tokens": 5, "source": "router", "occurred_at_us": 1, "estimated": True,
    }  # fmt: skip
    new = {**old, "request_id": "new", "simulated": True}
    journal = tmp_path / "router-usage.journal"
    journal.write_text("".join(json.dumps(x) + "\n" for x in (old, new)), encoding="utf-8")
    intents, _ = replay(journal)
    assert not intents["old"].simulated  # written before the flag: a real call
    assert intents["new"].simulated
