"""``quorum demo``: the examples, run against a mesh that is already up."""

from __future__ import annotations

import grpc

from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.formatting import format_completion, format_moderation, format_usage
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc

TEXTS = (
    "Thanks for the quick delivery, the package arrived in perfect condition.",
    "You are a worthless idiot and everyone here hates you.",
    "Can someone recommend a good book about the history of mathematics?",
    "Shut up, you stupid moron, nobody asked for your garbage opinion.",
)

#: (prompt, model, task): by task, by name, by default, and one the moderation blocks
PROMPTS: tuple[tuple[str, str, str], ...] = (
    ("Summarize the plot of Hamlet in two sentences.", "", "summarize"),
    ("Write a Python function that reverses a string.", "", "code"),
    ("Draft a polite reply declining a meeting invitation.", "claude-sonnet-4.5", ""),
    ("What is the capital of Australia?", "", ""),
    ("Tell that stupid idiot of a neighbour he is worthless garbage.", "", ""),
)

TIMEOUT_S = 30.0


def _heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)))


def run(addresses: dict[str, str]) -> int:
    with (
        grpc.insecure_channel(addresses["voter"]) as voter_ch,
        grpc.insecure_channel(addresses["router"]) as router_ch,
        grpc.insecure_channel(addresses["cost"]) as cost_ch,
    ):
        voter = voter_pb2_grpc.VoterServiceStub(voter_ch)
        router = router_pb2_grpc.RouterServiceStub(router_ch)
        cost = cost_pb2_grpc.CostServiceStub(cost_ch)

        _heading("Moderation: every model votes")
        for text in TEXTS:
            resp = voter.Moderate(voter_pb2.ModerateRequest(text=text), timeout=TIMEOUT_S)
            print(format_moderation(resp, text) + "\n")

        _heading("Completion: routed, moderated, priced")
        for prompt, model, task in PROMPTS:
            how = f"model={model}" if model else (f"task={task}" if task else "no model, no task")
            print(f"prompt: {prompt!r} ({how})")
            try:
                resp = router.Complete(
                    router_pb2.CompleteRequest(
                        prompt=prompt, model=model, task=task, max_tokens=80
                    ),
                    timeout=TIMEOUT_S,
                )
            except grpc.RpcError as e:
                assert isinstance(e, grpc.Call)
                print(f"  refused: {e.code().name}: {e.details()}\n")
                continue
            print(format_completion(resp) + "\n")

        _heading("Usage and cost so far")
        summary = cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=TIMEOUT_S)
        print(format_usage(summary))
    return 0
