"""Complete and CompleteStream through the real router (in process) to the local model on the
real tritonserver, billed by the real cost service: usage is the model's own token counts,
the answer is not simulated, and with no provider key a request that names nothing goes to
the local model."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from quorum import config
from quorum.cost.v1 import cost_pb2
from quorum.localmodels.generation import Generator
from quorum.router.v1 import router_pb2
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository
from tests.integration.inproc import free_port, reason, router_and_cost

pytestmark = pytest.mark.triton

PROMPT = "Name three colours of the rainbow."


@pytest.fixture(scope="module")
def triton() -> Iterator[TritonServer]:
    with TritonServer(
        TritonOptions(model_repository=default_model_repository(), models=("smollm2",))
    ) as s:
        yield s


def mesh_data(triton_address: str) -> dict:
    data = config.load(env={})
    data["router"] |= {
        "address": "127.0.0.1:0",
        "voter_address": f"127.0.0.1:{free_port()}",  # no moderation: never called
        "moderation": "none",
        "triton_address": triton_address,
        "simulator_url": "",
    }
    data["cost"]["address"] = f"127.0.0.1:{free_port()}"
    data["router"]["cost_address"] = data["cost"]["address"]
    data["usage"]["record_wait_s"] = 2.0  # so that usage_recorded can be checked
    return data


def prompt_tokens(generator: Generator, text: str) -> int:
    return len(generator.prompt_tokens([{"role": "user", "content": text}]))


async def summary_with(cost, n: int) -> cost_pb2.GetUsageSummaryResponse:
    import asyncio
    import time

    deadline = time.monotonic() + 10
    while True:
        s = await cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
        if s.requests >= n or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.1)


async def test_complete_and_stream_on_the_local_model_are_billed_exactly(
    triton, generator, tmp_path
):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}  # no provider key at all
    async with router_and_cost(mesh_data(triton.grpc_address), env) as stubs:
        # no model, no task, no key: the local model answers (the no-key rule)
        resp = await stubs.router.Complete(
            router_pb2.CompleteRequest(prompt=PROMPT, max_tokens=8), timeout=60
        )
        assert resp.model == "smollm2-135m" and resp.provider == "triton"
        assert not resp.simulated and resp.route_reason == "default model"
        assert resp.text.strip() and resp.finish_reason == "length"
        n_in = prompt_tokens(generator, PROMPT)
        assert (resp.usage.input_tokens, resp.usage.output_tokens) == (n_in, 8)
        assert resp.usage_recorded and resp.cost.currency == "USD"

        stream = stubs.router.CompleteStream(
            router_pb2.CompleteStreamRequest(
                request=router_pb2.CompleteRequest(
                    prompt=PROMPT, model="smollm2-135m", max_tokens=300
                )
            ),
            timeout=60,
        )
        deltas, summary = [], None
        async for event in stream:
            if event.WhichOneof("event") == "delta":
                deltas.append(event.delta)
            else:
                summary = event.summary
        assert summary is not None and len(deltas) >= 3
        assert summary.model == "smollm2-135m" and not summary.simulated
        assert summary.usage.input_tokens == n_in
        assert 0 < summary.usage.output_tokens <= 300
        assert summary.finish_reason in ("stop", "length")

        # the ledger holds both calls with the model's counts, none estimated
        s = await summary_with(stubs.cost, 2)
        assert s.requests == 2 and s.estimated_requests == 0
        assert s.usage.input_tokens == 2 * n_in
        assert s.usage.output_tokens == 8 + summary.usage.output_tokens
        (row,) = s.models
        assert row.model == "smollm2-135m"

        # a named remote model without its key is refused, not simulated (no simulator)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stubs.router.Complete(
                router_pb2.CompleteRequest(prompt=PROMPT, model="gpt-4.1"), timeout=10
            )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(e.value) == "MODEL_NOT_CONFIGURED"
