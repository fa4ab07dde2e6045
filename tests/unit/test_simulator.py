"""The provider simulator speaks the OpenAI chat-completions protocol on a real loopback port."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from quorum import config
from quorum.registry import CATEGORIES as REGISTRY_CATEGORIES
from quorum.registry import OpenAIBackend, load_registry
from quorum.simulator import (
    KNOWN_MODELS,
    LEAK_MARKER,
    MAX_BODY_BYTES,
    SYSTEM_FINGERPRINT,
    Fault,
    ProviderSimulator,
    count_tokens,
    judge,
)

PROMPT = "Please summarise the history of the Roman aqueducts in three sentences"
# the simulated judge answers every category the registry (and so the judges' schema) knows
CATEGORIES = set(REGISTRY_CATEGORIES)
KEY_LIKE = re.compile(r"sk-[A-Za-z0-9]")
JUDGE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "moderation_verdict", "strict": True, "schema": {"type": "object"}},
}


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator() as s:
        yield s


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def chat(
    client: httpx.Client,
    sim: ProviderSimulator,
    prompt: str = PROMPT,
    model: str = "gpt-4.1",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
    return client.post(f"{sim.url}/chat/completions", json=body, headers=headers)


def sse_events(resp: httpx.Response) -> list[str]:
    """The ``data`` payloads of an SSE body (each event is one ``data:`` line here)."""
    out = []
    for block in resp.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            out.append(block.removeprefix("data: "))
    return out


def stream_chat(
    client: httpx.Client, sim: ProviderSimulator, **extra: Any
) -> tuple[httpx.Response, list[str]]:
    resp = chat(client, sim, stream=True, **extra)
    return resp, sse_events(resp)


# -- protocol shape -------------------------------------------------------------------------


def test_count_tokens_rule() -> None:
    assert count_tokens("") == 0
    assert count_tokens("a") == 1
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("x" * 400) == 100


def test_unary_completion_shape_and_usage(sim: ProviderSimulator, client: httpx.Client) -> None:
    resp = chat(client, sim)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4.1"
    assert body["system_fingerprint"] == SYSTEM_FINGERPRINT
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content.startswith("[simulated gpt-4.1] ")
    assert "Roman aqueducts" in content  # derived from the prompt
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_tokens(PROMPT)
    assert usage["completion_tokens"] == count_tokens(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # deterministic: the same request gets the same content
    again = chat(client, sim).json()
    assert again["choices"][0]["message"]["content"] == content


def test_answer_uses_last_user_message(sim: ProviderSimulator, client: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question about cats"},
        {"role": "assistant", "content": "cats are great"},
        {"role": "user", "content": [{"type": "text", "text": "second question about dogs"}]},
    ]
    body = {"model": "m", "messages": messages}
    resp = client.post(f"{sim.url}/chat/completions", json=body).json()
    content = resp["choices"][0]["message"]["content"]
    assert "dogs" in content
    assert "cats" not in content
    expected = sum(
        count_tokens(t)
        for t in (
            "be brief",
            "first question about cats",
            "cats are great",
            "second question about dogs",
        )
    )
    assert resp["usage"]["prompt_tokens"] == expected


def test_max_tokens_truncates_with_length(sim: ProviderSimulator, client: httpx.Client) -> None:
    body = chat(client, sim, max_tokens=3).json()
    content = body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "length"
    # the label is never cut; max_tokens bounds what follows it (4 characters a token)
    assert content == "[simulated gpt-4.1] " + "You asked ab"
    assert body["usage"]["completion_tokens"] == count_tokens(content)


def test_invalid_requests_get_openai_errors(sim: ProviderSimulator, client: httpx.Client) -> None:
    bodies: list[object] = [{"messages": []}, {"model": "m", "messages": "hi"}, [1, 2]]
    for body in bodies:
        resp = client.post(f"{sim.url}/chat/completions", json=body)
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "invalid_request_error"
    resp = chat(client, sim, max_tokens=0)
    assert resp.status_code == 400
    resp = client.post(
        f"{sim.url}/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert client.get(f"{sim.url}/nope").status_code == 404


def test_stream_shape_matches_unary(sim: ProviderSimulator, client: httpx.Client) -> None:
    unary = chat(client, sim).json()
    resp, events = stream_chat(client, sim, stream_options={"include_usage": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["transfer-encoding"] == "chunked"
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["system_fingerprint"] == SYSTEM_FINGERPRINT for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == unary["choices"][0]["message"]["content"]
    # one content chunk per token
    content_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) == unary["usage"]["completion_tokens"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == unary["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage(
    sim: ProviderSimulator, client: httpx.Client
) -> None:
    _, events = stream_chat(client, sim)
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]"
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_honours_max_tokens(sim: ProviderSimulator, client: httpx.Client) -> None:
    _, events = stream_chat(client, sim, max_tokens=2, stream_options={"include_usage": True})
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "[simulated gpt-4.1] You aske"
    assert chunks[-1]["usage"]["completion_tokens"] == count_tokens(text)


def test_models_and_healthz(sim: ProviderSimulator, client: httpx.Client) -> None:
    chat(client, sim, model="my-custom-model")
    models = client.get(f"{sim.url}/models").json()
    assert models["object"] == "list"
    ids = {m["id"] for m in models["data"]}
    assert {"gpt-4.1", "my-custom-model"} <= ids
    base = sim.url.removesuffix("/v1")
    assert client.get(f"{base}/healthz").json() == {"status": "ok", "simulated": True}


# -- judge mode -----------------------------------------------------------------------------


def verdict_of(client: httpx.Client, sim: ProviderSimulator, text: str) -> dict[str, Any]:
    body = chat(client, sim, prompt=text, response_format=JUDGE_FORMAT).json()
    content = body["choices"][0]["message"]["content"]
    verdict: dict[str, Any] = json.loads(content)  # pure JSON: no label, no fence
    return verdict


def test_judge_mode_safe_text(sim: ProviderSimulator, client: httpx.Client) -> None:
    v = verdict_of(client, sim, "What a lovely morning for a walk in the park.")
    assert v["is_safe"] is True
    assert set(v["categories"]) == CATEGORIES
    assert all(s < 0.5 for s in v["categories"].values())
    assert 0.0 <= v["confidence"] <= 1.0
    assert "simulated" in v["reason"]


def test_judge_mode_flags_keywords(sim: ProviderSimulator, client: httpx.Client) -> None:
    v = verdict_of(client, sim, "I will kill you, you stupid idiot")
    assert v["is_safe"] is False
    assert v["categories"]["violence"] >= 0.5
    assert v["categories"]["harassment"] > v["categories"]["violence"]  # two hits beat one
    assert v["categories"]["adult"] < 0.5
    assert "simulated" in v["reason"]
    spam = verdict_of(client, sim, "CLICK HERE to claim your free money, winner!")
    assert spam["categories"]["spam"] >= 0.5 and spam["is_safe"] is False


def test_judge_mode_only_for_moderation_schema(
    sim: ProviderSimulator, client: httpx.Client
) -> None:
    """Another schema gets JSON that follows it (not a verdict, not prose)."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    other = {"type": "json_schema", "json_schema": {"name": "something_else", "schema": schema}}
    body = chat(client, sim, response_format=other).json()
    content = json.loads(body["choices"][0]["message"]["content"])
    assert set(content) == {"city", "population"} and isinstance(content["population"], int)
    assert "is_safe" not in content


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_judge_verdict_is_always_well_formed(text: str) -> None:
    v = judge(text)
    assert isinstance(v["is_safe"], bool)
    assert 0.0 <= v["confidence"] <= 1.0
    assert set(v["categories"]) == CATEGORIES
    assert all(0.0 <= s <= 1.0 for s in v["categories"].values())
    assert v["is_safe"] == all(s < 0.5 for s in v["categories"].values())
    assert "simulated" in v["reason"]
    json.dumps(v)


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 503])
def test_status_fault(status: int, client: httpx.Client) -> None:
    with ProviderSimulator(faults=[Fault("status", status=status)]) as sim:
        resp = chat(client, sim)
        assert resp.status_code == status
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert LEAK_MARKER in err["message"]
        assert "retry-after" not in resp.headers
        assert chat(client, sim).status_code == status  # times=None: every request


def test_rate_limit_fault_with_times(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("rate_limit", retry_after=2, times=1))
    first = chat(client, sim)
    assert first.status_code == 429
    assert first.headers["retry-after"] == "2"
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    assert chat(client, sim).status_code == 200
    assert sim.faults == []


def test_rate_limit_default_and_http_date(sim: ProviderSimulator, client: httpx.Client) -> None:
    date = "Wed, 21 Oct 2037 07:28:00 GMT"
    sim.add_fault(Fault("rate_limit", times=1))
    sim.add_fault(Fault("rate_limit", retry_after=date, times=1))
    assert chat(client, sim).headers["retry-after"] == "1"
    assert chat(client, sim).headers["retry-after"] == date


def test_status_fault_can_carry_retry_after(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("status", status=503, retry_after=1.5, times=1))
    resp = chat(client, sim)
    assert (resp.status_code, resp.headers["retry-after"]) == (503, "1.5")


def test_fault_for_one_model_only(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("status", status=500, model="bad-model"))
    assert chat(client, sim, model="bad-model").status_code == 500
    assert chat(client, sim, model="good-model").status_code == 200


def test_faults_apply_in_order(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("status", status=503, times=2))
    sim.add_fault(Fault("rate_limit", times=1))
    codes = [chat(client, sim).status_code for _ in range(4)]
    assert codes == [503, 503, 429, 200]


def test_hang_fault_closes_after_seconds(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("hang", seconds=0.3, times=1))
    t0 = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, sim)
    assert 0.3 <= time.monotonic() - t0 < 3
    assert chat(client, sim).status_code == 200


def test_stop_cuts_a_hang_short() -> None:
    sim = ProviderSimulator(faults=[Fault("hang", seconds=60)])
    sim.start()
    errors: list[BaseException] = []

    def call() -> None:
        with httpx.Client(timeout=30) as c:
            try:
                chat(c, sim)
            except httpx.HTTPError as exc:
                errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    for _ in range(200):
        if sim.requests:
            break
        time.sleep(0.01)
    t0 = time.monotonic()
    sim.stop()
    stopped_in = time.monotonic() - t0
    t.join(timeout=5)
    assert stopped_in < 2
    assert not t.is_alive()
    assert len(errors) == 1
    sim.stop()  # idempotent


def test_malformed_json_fault(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("malformed_json", times=1))
    resp = chat(client, sim, response_format=JUDGE_FORMAT)
    assert resp.status_code == 200
    content = resp.json()["choices"][0]["message"]["content"]  # the HTTP body is fine
    assert content.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


def test_code_fenced_json_fault(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("code_fenced_json", times=1))
    content = chat(client, sim, response_format=JUDGE_FORMAT).json()["choices"][0]["message"][
        "content"
    ]
    assert content.startswith("```json\n") and content.endswith("\n```")
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    inner = json.loads(content.removeprefix("```json\n").removesuffix("\n```"))
    assert set(inner) == {"is_safe", "confidence", "categories", "reason"}


def test_bad_body_fault(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("bad_body", times=2))
    for stream in (False, True):
        resp = chat(client, sim, stream=stream)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/html")
        with pytest.raises(json.JSONDecodeError):
            resp.json()


def test_cut_stream_fault(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("cut_stream", after_chunks=3, times=1))
    events: list[str] = []
    body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", f"{sim.url}/chat/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        events.extend(line for line in resp.iter_lines() if line)
    assert len(events) == 3
    assert "data: [DONE]" not in events
    # the next stream is whole again
    _, again = stream_chat(client, sim)
    assert again[-1] == "[DONE]"


def test_cut_stream_fault_on_unary_truncates_body(
    sim: ProviderSimulator, client: httpx.Client
) -> None:
    sim.add_fault(Fault("cut_stream", times=1))
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, sim)


def test_no_usage_fault(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("no_usage", times=2))
    assert "usage" not in chat(client, sim).json()
    _, events = stream_chat(client, sim, stream_options={"include_usage": True})
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault("status", status=200)
    with pytest.raises(ValueError):
        Fault("hang", seconds=10_000)
    with pytest.raises(ValueError):
        Fault("rate_limit", times=0)
    with pytest.raises(ValueError):
        Fault("rate_limit", retry_after="1\r\nX-Injected: yes")
    with pytest.raises(ValueError):
        Fault.from_json({"kind": "status", "colour": "red"})
    with pytest.raises(ValueError):
        Fault.from_json({"kind": "status", "status": "500"})
    assert Fault.from_json({"kind": "hang", "seconds": 1}) == Fault("hang", seconds=1)


def test_faults_over_http_admin(sim: ProviderSimulator, client: httpx.Client) -> None:
    admin = sim.url.removesuffix("/v1") + "/_simulator/faults"
    resp = client.post(admin, json={"kind": "status", "status": 503, "times": 1})
    assert resp.status_code == 200
    (listed,) = resp.json()["faults"]
    assert listed["kind"] == "status" and listed["remaining"] == 1
    assert chat(client, sim).status_code == 503
    assert chat(client, sim).status_code == 200
    assert client.get(admin).json() == {"faults": []}
    # a list of faults, then clear them all
    resp = client.post(admin, json=[{"kind": "rate_limit"}, {"kind": "bad_body", "model": "x"}])
    assert len(resp.json()["faults"]) == 2
    assert client.delete(admin).json() == {"faults": []}
    assert chat(client, sim).status_code == 200
    # bad faults are refused, not half-applied
    assert client.post(admin, json=[{"kind": "hang"}, {"kind": "nope"}]).status_code == 400
    assert sim.faults == []


# -- auth, limits, recording, latency -------------------------------------------------------


def test_api_key_required_when_configured(client: httpx.Client) -> None:
    key = "sk-test-SIMKEY-123"
    with ProviderSimulator(api_key=key) as sim:
        missing = chat(client, sim)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        wrong = chat(client, sim, headers={"Authorization": "Bearer sk-wrong"})
        assert wrong.status_code == 401
        ok = chat(client, sim, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        assert client.get(f"{sim.url}/models").status_code == 401
        assert client.get(sim.url.removesuffix("/v1") + "/healthz").status_code == 200
        flags = [r.has_authorization for r in sim.requests if r.path == "/v1/chat/completions"]
        assert flags == [False, True, True]
        assert key not in repr(sim.requests)  # the value is never stored
        dumped = client.get(sim.url.removesuffix("/v1") + "/_simulator/requests").text
        assert key not in dumped


def test_body_limit(sim: ProviderSimulator, client: httpx.Client) -> None:
    resp = chat(client, sim, prompt="x" * (MAX_BODY_BYTES + 10))
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"
    assert chat(client, sim).status_code == 200  # the server is fine afterwards


def test_requests_are_recorded(sim: ProviderSimulator, client: httpx.Client) -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    chat(client, sim, model="rec-model", headers={"traceparent": tp}, max_tokens=5)
    chat(client, sim)
    first, second = sim.requests
    assert first.method == "POST"
    assert first.path == "/v1/chat/completions"
    assert first.model == "rec-model"
    assert first.traceparent == tp
    assert first.has_authorization is False
    assert first.body["max_tokens"] == 5
    assert first.body["messages"][0]["content"] == PROMPT
    assert second.traceparent is None
    base = sim.url.removesuffix("/v1")
    listed = client.get(f"{base}/_simulator/requests").json()["requests"]
    assert listed[0]["traceparent"] == tp
    assert listed[0]["model"] == "rec-model"
    assert client.delete(f"{base}/_simulator/requests").json() == {"requests": []}
    assert sim.requests == []


def test_latency(client: httpx.Client) -> None:
    with ProviderSimulator(latency_s=0.2, token_delay_s=0.01) as sim:
        t0 = time.monotonic()
        chat(client, sim)
        assert time.monotonic() - t0 >= 0.2
        t0 = time.monotonic()
        _, events = stream_chat(client, sim, max_tokens=10)
        assert events[-1] == "[DONE]"
        assert time.monotonic() - t0 >= 0.2 + 0.05


def test_lifecycle() -> None:
    sim = ProviderSimulator()
    with pytest.raises(RuntimeError):
        _ = sim.url
    sim.start()
    try:
        assert sim.url == f"http://127.0.0.1:{sim.port}/v1"
        with pytest.raises(RuntimeError):
            sim.start()
    finally:
        sim.stop()
    sim.stop()


def test_cli_serves_until_sigterm() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quorum.simulator", "--port", "0", "--latency", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("provider simulator (simulated responses) listening on http://")
        url = line.rsplit(" ", 1)[1].strip()
        with httpx.Client(timeout=5) as c:
            for model in KNOWN_MODELS:  # it serves the embedded defaults' models, only them
                resp = c.post(
                    f"{url}/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                )
                assert resp.status_code == 200
            resp = c.post(
                f"{url}/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert resp.status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_stats_count_what_a_provider_would_bill(
    sim: ProviderSimulator, client: httpx.Client
) -> None:
    base = sim.url.removesuffix("/v1")
    ok = chat(client, sim).json()["usage"]
    stream_chat(client, sim)
    sim.add_fault(Fault(kind="status", status=503, times=1))
    assert chat(client, sim).status_code == 503  # an error status bills nothing
    stats = client.get(f"{base}/_simulator/stats").json()
    assert stats["completions"] == 2 == sim.stats["completions"]
    assert stats["prompt_tokens"] == 2 * ok["prompt_tokens"]
    assert client.delete(f"{base}/_simulator/stats").json()["completions"] == 0


# -- the simulated prompt cache --------------------------------------------------------------

LONG = "The quick brown fox jumps over the lazy dog. " * 100  # 4,500 characters: 1,125 tokens


def conversation(client: httpx.Client, sim: ProviderSimulator, *messages: tuple[str, str],
                 model: str = "gpt-4.1", stream: bool = False) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": r, "content": c} for r, c in messages],
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        resp = client.post(f"{sim.url}/chat/completions", json=body)
        return dict(json.loads(sse_events(resp)[-2])["usage"])
    return dict(client.post(f"{sim.url}/chat/completions", json=body).json()["usage"])


def test_a_repeated_long_prompt_is_served_from_the_cache(
    sim: ProviderSimulator, client: httpx.Client
) -> None:
    first = conversation(client, sim, ("system", LONG), ("user", "first question"))
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}  # always reported
    # the same system prompt, another question: the system message comes from the cache
    second = conversation(client, sim, ("system", LONG), ("user", "second question"), stream=True)
    assert second["prompt_tokens_details"] == {"cached_tokens": count_tokens(LONG)}
    assert second["prompt_tokens"] == count_tokens(LONG) + count_tokens("second question")
    # the whole prompt again: all of it
    third = conversation(client, sim, ("system", LONG), ("user", "second question"))
    assert third["prompt_tokens_details"]["cached_tokens"] == third["prompt_tokens"]
    # per model: another model has seen nothing
    other = conversation(client, sim, ("system", LONG), ("user", "x"), model="deepseek-v3.2")
    assert other["prompt_tokens_details"]["cached_tokens"] == 0
    assert sim.stats["cached_tokens"] == count_tokens(LONG) + third["prompt_tokens"]
    sim.clear_prompt_cache()
    again = conversation(client, sim, ("system", LONG), ("user", "first question"))
    assert again["prompt_tokens_details"]["cached_tokens"] == 0


def test_only_a_leading_run_of_whole_messages_is_cached(
    sim: ProviderSimulator, client: httpx.Client
) -> None:
    conversation(client, sim, ("user", LONG), ("assistant", "an answer"), ("user", "more"))
    # the first message changed: nothing is a prefix any more
    changed = conversation(client, sim, ("user", LONG + "!"), ("assistant", "an answer"))
    assert changed["prompt_tokens_details"]["cached_tokens"] == 0
    # a longer conversation that begins the same way: its first three messages are cached
    longer = conversation(
        client, sim, ("user", LONG), ("assistant", "an answer"), ("user", "more"), ("user", "end")
    )
    assert longer["prompt_tokens_details"]["cached_tokens"] == count_tokens(LONG) + count_tokens(
        "an answer"
    ) + count_tokens("more")


def test_short_prompts_are_not_cached_below_the_minimum(client: httpx.Client) -> None:
    with ProviderSimulator() as sim:
        for _ in range(2):
            usage = conversation(client, sim, ("user", PROMPT))
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    with ProviderSimulator(prompt_cache_min_tokens=1) as sim:
        conversation(client, sim, ("user", PROMPT))
        usage = conversation(client, sim, ("user", PROMPT))
        assert usage["prompt_tokens_details"]["cached_tokens"] == count_tokens(PROMPT)
    with pytest.raises(ValueError, match="prompt_cache_min_tokens"):
        ProviderSimulator(prompt_cache_min_tokens=0)


def test_errors_cache_nothing(sim: ProviderSimulator, client: httpx.Client) -> None:
    sim.add_fault(Fault("status", status=500, times=1))
    assert chat(client, sim, prompt=LONG).status_code == 500
    usage = chat(client, sim, prompt=LONG).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0


def test_any_json_schema_gets_an_answer_that_validates(
    sim: ProviderSimulator, client: httpx.Client
) -> None:
    """Structured outputs beyond the judge's verdict: what a Pydantic model's schema asks
    for (the official SDK's parse() sends exactly this), deterministic in the prompt."""

    class Mood(StrEnum):
        calm = "calm"
        loud = "loud"

    class Step(BaseModel):
        explanation: str
        output: str

    class Answer(BaseModel):
        steps: list[Step]
        final: str = Field(min_length=3)
        mood: Mood
        score: float
        count: int = Field(ge=1, le=3)
        note: str | None

    rf = {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "strict": True, "schema": Answer.model_json_schema()},
    }
    body = chat(client, sim, prompt="solve 8x + 7 = -23", response_format=rf).json()
    content = body["choices"][0]["message"]["content"]
    parsed = Answer.model_validate_json(content)
    assert parsed.steps[0].explanation == "simulated: solve 8x + 7 = -23"
    assert body["choices"][0]["finish_reason"] == "stop"
    again = chat(client, sim, prompt="solve 8x + 7 = -23", response_format=rf).json()
    assert again["choices"][0]["message"]["content"] == content
    # max_tokens bounds the whole document, as for a verdict
    cut = chat(client, sim, prompt="solve", response_format=rf, max_tokens=5).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    assert len(cut["choices"][0]["message"]["content"]) == 20


def test_json_object_mode_answers_a_json_object(
    sim: ProviderSimulator, client: httpx.Client
) -> None:
    body = chat(client, sim, response_format={"type": "json_object"}).json()
    assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"model": None}, "model", "missing_required_parameter"),
        ({"model": 7}, "model", "invalid_type"),
        ({"messages": None}, "messages", "missing_required_parameter"),
        ({"messages": []}, "messages", "invalid_type"),
        ({"messages": [{"content": "hi"}]}, "messages.[0].role", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.[0].content", "invalid_type"),
        ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
        ({"max_completion_tokens": "9"}, "max_completion_tokens", "invalid_type"),
        ({"response_format": "json"}, "response_format", "invalid_type"),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "invalid_value"),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "missing_required_parameter",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
            "missing_required_parameter",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
            "response_format.json_schema.name",
            "invalid_value",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/Nope"}},
                }
            },
            "response_format",
            None,
        ),
    ],
)
def test_bad_requests_name_the_param(
    sim: ProviderSimulator,
    client: httpx.Client,
    extra: dict[str, Any],
    param: str,
    code: str | None,
) -> None:
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], **extra}
    resp = client.post(f"{sim.url}/chat/completions", json=body)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert sim.stats["completions"] == 0


@pytest.mark.parametrize(("prompt", "says"), [("hello", "(1 word)"), ("hello there", "(2 words)")])
def test_reply_counts_words_in_good_english(
    sim: ProviderSimulator, client: httpx.Client, prompt: str, says: str
) -> None:
    content = chat(client, sim, prompt=prompt).json()["choices"][0]["message"]["content"]
    assert says in content


def test_a_model_it_does_not_serve_is_404_model_not_found() -> None:
    with ProviderSimulator(models=["gpt-4.1"]) as sim, httpx.Client() as client:
        ok = chat(client, sim)
        assert ok.status_code == 200
        gone = chat(client, sim, model="gpt-9")
        assert gone.status_code == 404
        err = gone.json()["error"]
        assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error"
        assert err["param"] == "model" and "gpt-9" in err["message"]
        # a key pasted where the model goes is not echoed back
        key_like = "sk-proj-" + "Ab3" * 10
        leaked = chat(client, sim, model=key_like)
        assert leaked.status_code == 404
        assert key_like not in leaked.text and not KEY_LIKE.search(leaked.text)


def test_models_lists_what_it_serves() -> None:
    with ProviderSimulator(models=["gpt-4.1", "deepseek-chat"]) as sim, httpx.Client() as client:
        listed = client.get(f"{sim.url}/models").json()
        assert [m["id"] for m in listed["data"]] == ["deepseek-chat", "gpt-4.1"]
        one = client.get(f"{sim.url}/models/gpt-4.1")
        assert one.status_code == 200 and one.json()["id"] == "gpt-4.1"
        gone = client.get(f"{sim.url}/models/gpt-9")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_known_models_are_the_embedded_defaults_provider_models() -> None:
    """What ``python -m quorum.simulator`` serves by default: the defaults' provider ids."""
    registry = load_registry(config.load(None, {}))
    provider_models = {
        m.backend.provider_model
        for m in registry.models.values()
        if isinstance(m.backend, OpenAIBackend)
    }
    assert set(KNOWN_MODELS) == provider_models


def test_no_error_holds_a_key_like_string(client: httpx.Client) -> None:
    key = "sk-test-SIMKEY-123"
    with ProviderSimulator(api_key=key, models=["gpt-4.1"]) as sim:
        auth = {"Authorization": f"Bearer {key}"}
        bodies = [
            chat(client, sim).text,
            chat(client, sim, headers={"Authorization": "Bearer sk-wrong-0123456789"}).text,
            chat(client, sim, headers=auth, model="sk-abcdefgh").text,
            chat(client, sim, headers=auth, max_tokens=-1).text,
        ]
        sim.add_fault(Fault("rate_limit", times=1))
        bodies.append(chat(client, sim, headers=auth).text)
        for text in bodies:
            assert "error" in json.loads(text)
            assert not KEY_LIKE.search(text), text
