"""The real ``tritonserver`` binary with the project's ``triton/`` repository (no mocks).

One module-scoped server serves most tests; the lifecycle, tracing and command-line tests
start their own. Scores are compared with the pure modules: alt-profanity-check (trained on
public labelled tweets and Wikipedia comments) and the spaCy NSFW pipeline.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from tritonclient.grpc import InferInput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from quorum.backends.triton import TritonScorer
from quorum.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from quorum.localmodels import generation, nsfw
from quorum.localmodels.profanity import score_texts
from quorum.otlprelay import OtlpRelay
from quorum.tritonserver import (
    SHM_DIR,
    TritonOptions,
    TritonServer,
    _remove_stale_leftovers,
    default_model_repository,
)
from tests.otlp_receiver import OtlpReceiver, Span

pytestmark = pytest.mark.triton

MODEL = "profanity_check"
NSFW_MODEL = "nsfw_check"
# every model directory in triton/ loaded by default: smollm2 only with its extra (local-llm)
ALL_MODELS = tuple(
    sorted(
        ("ngram_heads", NSFW_MODEL, MODEL, "text_heads")
        + (() if generation.missing() else ("smollm2",))
    )
)
EXPLICIT = "hardcore porn video of a naked couple fucking"
OFFENSIVE = "you are a fucking idiot and everyone hates you"
POLITE = "thank you for your help, have a lovely day"

TEXTS = [
    OFFENSIVE,
    POLITE,
    "shut up you stupid bitch",
    "could you please send me the quarterly report by friday?",
    "what a piece of shit",
    "the weather in lisbon is mild in october",
    "",
    "caf\u00e9 \u2615 na\u00efve r\u00e9sum\u00e9",
    "go to hell, loser",
    "I disagree with your edit, please cite a source",
]


def _texts(n: int) -> list[str]:
    return [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(n)]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for a non-reaping init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pids_with(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (Triton's stubs carry the shm prefix)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and _alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        if not pids:
            break
        time.sleep(0.05)
    return pids


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    srv = TritonServer(TritonOptions(model_repository=default_model_repository()))
    srv.start(timeout_s=120)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def scorer(client: InferenceServerClient) -> TritonScorer:
    return TritonScorer(client)


def _stats(server: TritonServer) -> tuple[int, int]:
    """(inference_count, execution_count) of the model, from Triton's statistics API."""
    r = httpx.get(f"http://{server.http_address}/v2/models/{MODEL}/stats", timeout=5)
    r.raise_for_status()
    s = r.json()["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


# -- serving -------------------------------------------------------------------------------------


async def test_model_is_ready(server: TritonServer, scorer: TritonScorer) -> None:
    r = httpx.get(f"http://{server.http_address}/v2/models/{MODEL}/ready", timeout=5)
    assert r.status_code == 200
    assert await scorer.is_ready(MODEL, timeout_s=2)
    assert not await scorer.is_ready("no_such_model", timeout_s=2)
    assert server.models == ALL_MODELS
    assert server.grpc_address.startswith("127.0.0.1:")
    assert server.metrics_address != server.grpc_address != server.http_address


async def test_offensive_scores_high_polite_low(scorer: TritonScorer) -> None:
    offensive, polite = await scorer.score(MODEL, [OFFENSIVE, POLITE], timeout_s=10)
    assert offensive > 0.5
    assert polite < 0.5


async def test_batch_of_50_matches_pure_module(scorer: TritonScorer) -> None:
    texts = _texts(50)
    got = await scorer.score(MODEL, texts, timeout_s=10)
    np.testing.assert_allclose(got, score_texts(texts), rtol=0, atol=1e-6)


async def test_batch_larger_than_max_batch_size_is_split(scorer: TritonScorer) -> None:
    texts = _texts(150)
    got = await scorer.score(MODEL, texts, timeout_s=10)
    np.testing.assert_allclose(got, score_texts(texts), rtol=0, atol=1e-6)


async def test_concurrent_calls_are_batched_and_split_correctly(
    server: TritonServer, scorer: TritonScorer
) -> None:
    calls = [_texts(50)[i : i + 1 + i % 3] for i in range(20)]  # 1-3 texts per call
    before = _stats(server)
    results = await asyncio.gather(*(scorer.score(MODEL, c, timeout_s=10) for c in calls))
    after = _stats(server)
    for texts, got in zip(calls, results, strict=True):
        np.testing.assert_allclose(got, score_texts(texts), rtol=0, atol=1e-6)
    requests = after[0] - before[0]
    executions = after[1] - before[1]
    assert requests == sum(len(c) for c in calls)
    # the dynamic batcher merged requests, so the split-back path really ran
    assert executions < len(calls), (requests, executions)


async def test_empty_batch_needs_no_call(scorer: TritonScorer) -> None:
    assert await scorer.score(MODEL, [], timeout_s=1) == []


async def test_unknown_model_is_unavailable(scorer: TritonScorer) -> None:
    with pytest.raises(Unavailable) as info:
        await scorer.score("no_such_model", ["hello"], timeout_s=5)
    assert info.value.reason == "MODEL_NOT_READY"
    assert "no_such_model" in info.value.message
    assert "Request for unknown model" not in info.value.message  # our words, not Triton's


async def test_tiny_deadline_is_deadline_exceeded(scorer: TritonScorer) -> None:
    with pytest.raises(DeadlineExceeded):
        await scorer.score(MODEL, _texts(64), timeout_s=1e-6)


async def test_missing_input_gets_a_per_request_error(client: InferenceServerClient) -> None:
    # A request with the wrong input name is refused without harming the server.
    bad = InferInput("NOT_TEXT", [1, 1], "BYTES")
    bad.set_data_from_numpy(np.array([[b"x"]], dtype=object))
    with pytest.raises(Exception, match=r"NOT_TEXT|unexpected inference input"):
        await client.infer(MODEL, [bad], client_timeout=5)
    assert await TritonScorer(client).score(MODEL, [POLITE], timeout_s=5)


# -- the adult-content model ------------------------------------------------------------------


async def test_nsfw_model_scores_a_batch_like_the_pure_module(scorer: TritonScorer) -> None:
    assert await scorer.is_ready(NSFW_MODEL, timeout_s=2)
    texts = [EXPLICIT, *_texts(49)]
    got = await scorer.score(NSFW_MODEL, texts, timeout_s=10)
    np.testing.assert_allclose(got, nsfw.score_texts(texts), rtol=0, atol=1e-6)
    assert got[0] > 0.9  # explicit
    assert max(got[1:]) < 0.45  # insults and everyday texts: below nsfw-check's cut-off


async def test_nsfw_over_long_text_is_refused_alone(client: InferenceServerClient) -> None:
    def request(text: str) -> list[InferInput]:
        tensor = InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        return [tensor]

    too_long = "a" * (nsfw.MAX_TEXT_CHARS + 1)
    calls = [request(t) for t in (POLITE, too_long, EXPLICIT, POLITE)]
    results = await asyncio.gather(
        *(client.infer(NSFW_MODEL, c, client_timeout=10) for c in calls), return_exceptions=True
    )
    assert isinstance(results[1], InferenceServerException)
    assert results[1].status() == "StatusCode.INVALID_ARGUMENT"
    assert "100001 characters" in str(results[1].message())
    ok = [r for i, r in enumerate(results) if i != 1]
    assert all(not isinstance(r, BaseException) for r in ok), results
    scores = [float(r.as_numpy("SCORE")[0, 0]) for r in ok]  # type: ignore[union-attr]
    np.testing.assert_allclose(scores, nsfw.score_texts([POLITE, EXPLICIT, POLITE]), atol=1e-6)


def test_instance_kind_is_auto_in_the_repository_and_resolved_by_the_server(
    server: TritonServer,
) -> None:
    for model in ALL_MODELS:
        text = (default_model_repository() / model / "config.pbtxt").read_text()
        assert "kind: KIND_AUTO" in text
        r = httpx.get(f"http://{server.http_address}/v2/models/{model}/config", timeout=5)
        r.raise_for_status()
        kinds = {g["kind"] for g in r.json()["instance_group"]}
        assert kinds <= {"KIND_CPU", "KIND_GPU"}, kinds  # Triton picked a real kind


# -- lifecycle ----------------------------------------------------------------------------------


async def test_stopped_server_is_unavailable_fast_and_leaves_nothing() -> None:
    srv = TritonServer(TritonOptions(model_repository=default_model_repository()))
    srv.start()
    client = InferenceServerClient(srv.grpc_address)
    try:
        pid, prefix = srv.pid, srv.shm_prefix
        assert pid is not None and prefix is not None
        assert list(SHM_DIR.glob(f"{prefix}*")), "the Python backend uses shm with our prefix"
        stubs = [p for p in _pids_with(prefix) if p != pid]
        assert len(stubs) == len(ALL_MODELS), stubs  # one instance, one stub per model
        scorer = TritonScorer(client)
        assert len(await scorer.score(MODEL, [POLITE], timeout_s=5)) == 1
        await asyncio.to_thread(srv.stop)
        srv.stop()  # idempotent

        assert not _alive(pid)
        assert _wait_gone(stubs, 5) == []
        assert list(SHM_DIR.glob(f"{prefix}*")) == []
        assert srv.pid is None

        t0 = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await scorer.score(MODEL, [POLITE], timeout_s=5)
        assert time.monotonic() - t0 < 2.5
        assert info.value.reason == "TRITON_UNAVAILABLE"
        t0 = time.monotonic()
        assert not await scorer.is_ready(MODEL, timeout_s=5)
        assert time.monotonic() - t0 < 5.5
    finally:
        await client.close()
        srv.stop()


def test_stop_after_server_was_killed_cleans_up() -> None:
    srv = TritonServer(TritonOptions(model_repository=default_model_repository()))
    srv.start()
    try:
        pid, prefix = srv.pid, str(srv.shm_prefix)
        assert pid is not None
        stubs = [p for p in _pids_with(prefix) if p != pid]
        assert stubs
        os.kill(pid, signal.SIGKILL)  # a crash: Triton cleans up nothing
        deadline = time.monotonic() + 5
        while srv.returncode is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.returncode == -signal.SIGKILL
        assert list(SHM_DIR.glob(f"{prefix}*")), "a killed server leaves its shm behind"
    finally:
        srv.stop()
    assert _wait_gone(stubs, 5) == []
    assert list(SHM_DIR.glob(f"{prefix}*")) == []


def test_stale_shm_of_a_dead_launcher_is_removed_live_ones_kept() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    stale = SHM_DIR / f"quorum{child.pid}x{secrets.token_hex(4)}{secrets.token_hex(8)}"
    live = SHM_DIR / f"quorum{os.getpid()}x{secrets.token_hex(4)}{secrets.token_hex(8)}"
    try:
        stale.write_bytes(b"x")
        live.write_bytes(b"x")
        _remove_stale_leftovers()
        assert not stale.exists()
        assert live.exists()  # its launcher (this process) is alive
    finally:
        stale.unlink(missing_ok=True)
        live.unlink(missing_ok=True)


def _write_model(repo: Path, name: str, initialize_body: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]\n'
        "instance_group [{ kind: KIND_CPU count: 1 }]\n"
    )
    (repo / name / "1" / "model.py").write_text(
        f"class TritonPythonModel:\n    def initialize(self, args):\n        {initialize_body}\n"
    )


def test_model_that_fails_to_load_raises_unavailable_with_log(tmp_path: Path) -> None:
    _write_model(tmp_path, "broken", 'raise RuntimeError("boom: refuses to load")')
    srv = TritonServer(TritonOptions(model_repository=tmp_path))
    with pytest.raises(Unavailable) as info:
        srv.start(timeout_s=60)
    assert info.value.reason == "TRITON_START_FAILED"
    assert "boom: refuses to load" in info.value.message
    assert srv.pid is None
    assert list(SHM_DIR.glob(f"{srv.shm_prefix}*")) == []


def test_missing_repository_raises_unavailable_with_log(tmp_path: Path) -> None:
    srv = TritonServer(TritonOptions(model_repository=tmp_path / "nope", check_repository=False))
    with pytest.raises(Unavailable) as info:
        srv.start(timeout_s=60)
    assert "failed to stat" in info.value.message


def test_missing_repository_fails_the_check_before_launch(tmp_path: Path) -> None:
    srv = TritonServer(TritonOptions(model_repository=tmp_path / "nope"))
    with pytest.raises(FailedPrecondition) as info:
        srv.start(timeout_s=60)
    assert info.value.reason == "TRITON_REPOSITORY_INVALID"
    assert "is not a directory" in info.value.message
    assert srv.pid is None


def test_broken_config_fails_fast_naming_model_field_and_fix(tmp_path: Path) -> None:
    _write_model(tmp_path, "good", "pass")
    _write_model(tmp_path, "typo", "pass")
    config = tmp_path / "typo" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "typo"', 'name: "tpyo"'))
    srv = TritonServer(TritonOptions(model_repository=tmp_path))
    t0 = time.monotonic()
    with pytest.raises(FailedPrecondition) as info:
        srv.start(timeout_s=60)
    assert time.monotonic() - t0 < 5  # no server was launched and waited for
    assert info.value.reason == "TRITON_REPOSITORY_INVALID"
    assert "typo: name: name is 'tpyo' but the folder is 'typo'" in info.value.message
    assert 'fix: set name: "typo"' in info.value.message
    assert srv.pid is None
    # only the models to load are checked: loading "good" alone starts
    with TritonServer(TritonOptions(model_repository=tmp_path, models=("good",))) as ok:
        assert ok.models == ("good",)


def test_start_timeout_stops_the_server(tmp_path: Path) -> None:
    _write_model(tmp_path, "slow", "import time; time.sleep(60)")
    log_file = tmp_path / "triton.log"
    srv = TritonServer(TritonOptions(model_repository=tmp_path, log_file=log_file))
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as info:
        srv.start(timeout_s=2)
    assert "not ready after 2s" in info.value.message
    assert time.monotonic() - t0 < 20
    assert srv.pid is None
    assert _pids_with(str(srv.shm_prefix)) == []
    assert "slow" in log_file.read_text()  # a given log file is kept


# -- tracing ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def traced_server(receiver: OtlpReceiver) -> Iterator[TritonServer]:
    options = TritonOptions(
        model_repository=default_model_repository(),
        otlp_traces_url=receiver.url,
        otlp_schedule_delay_ms=100,
    )
    with TritonServer(options) as srv:
        yield srv


def _triton_spans(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s["trace_id"] == trace_id and s["service_name"] == "triton"]


def _root(spans: list[Span]) -> Span:
    ids = {s["span_id"] for s in spans}
    roots = [s for s in spans if s["parent_span_id"] not in ids]
    assert len(roots) == 1, spans
    return roots[0]


def _has_model_span(trace_id: str) -> Any:
    """Both Triton spans arrived, and everything between them: Triton exports in batches,
    so a child can arrive before its parent; wait until the spans form one tree."""

    def ready(spans: list[Span]) -> bool:
        ours = _triton_spans(spans, trace_id)
        ids = {s["span_id"] for s in ours}
        roots = [s for s in ours if s["parent_span_id"] not in ids]
        return (
            any(s["name"] == MODEL for s in ours)
            and any(s["name"] == "InferRequest" for s in ours)
            and len(roots) == 1
        )

    return ready


async def test_triton_continues_traceparent_from_grpc_metadata(
    traced_server: TritonServer, receiver: OtlpReceiver
) -> None:
    # Triton 2.51 now and then starts a trace of its own instead of continuing the gRPC
    # traceparent (see the next test): up to three calls, and one must continue its trace
    data = np.array([[POLITE.encode()]], dtype=object)
    tensor = InferInput("TEXT", [1, 1], "BYTES")
    tensor.set_data_from_numpy(data)
    for _ in range(3):
        trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
        async with InferenceServerClient(traced_server.grpc_address) as client:
            await client.infer(
                MODEL,
                [tensor],
                client_timeout=10,
                headers={"traceparent": f"00-{trace_id}-{span_id}-01"},
            )
        spans = await asyncio.to_thread(receiver.wait_for_spans, _has_model_span(trace_id), 15)
        ours = _triton_spans(spans, trace_id)
        if ours:
            break
    root = _root(ours)
    assert root["parent_span_id"] == span_id
    assert root["name"] == "InferRequest"
    model_span = next(s for s in ours if s["name"] == MODEL)
    assert model_span["attributes"]["triton.model_name"] == MODEL
    assert receiver.errors() == []


async def test_scorer_span_sits_between_caller_and_triton(
    traced_server: TritonServer, receiver: OtlpReceiver
) -> None:
    # Triton 2.51 now and then starts a trace of its own instead of continuing the gRPC
    # traceparent (about 1 call in 3 here): three calls, and one must show the whole chain
    calls = [(secrets.token_hex(16), secrets.token_hex(8)) for _ in range(3)]
    provider = TracerProvider(resource=Resource.create({"service.name": "quorum-test"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.url)))
    try:
        async with InferenceServerClient(traced_server.grpc_address) as client:
            scorer = TritonScorer(client, tracer_provider=provider)
            for trace_id, caller_span in calls:
                headers = {"traceparent": f"00-{trace_id}-{caller_span}-01", "x-request-id": "r1"}
                await scorer.score(MODEL, [OFFENSIVE], timeout_s=10, headers=headers)
    finally:
        provider.shutdown()

    def complete(spans: list[Span]) -> bool:
        return any(_has_model_span(t)(spans) for t, _ in calls)

    spans = await asyncio.to_thread(receiver.wait_for_spans, complete, 15)
    for trace_id, caller_span in calls:  # every scorer span, whatever Triton did
        mine = [
            s for s in spans if s["service_name"] == "quorum-test" and s["trace_id"] == trace_id
        ]
        assert len(mine) == 1, spans
        span = mine[0]
        assert span["name"] == f"triton infer {MODEL}"
        assert span["parent_span_id"] == caller_span
        assert span["kind"] == 3  # CLIENT
        assert span["attributes"] == {
            "gen_ai.operation.name": "classify",
            "gen_ai.provider.name": "triton",
            "gen_ai.request.model": MODEL,
        }
        if _has_model_span(trace_id)(spans):
            assert _root(_triton_spans(spans, trace_id))["parent_span_id"] == span["span_id"]
    assert complete(spans), "Triton continued none of the three traces"
    content_types = {ctype for path, ctype in receiver.requests() if path == "/v1/traces"}
    assert "application/x-protobuf" in content_types  # the Python SDK's exporter
    assert receiver.errors() == []


async def test_triton_spans_reach_a_protobuf_receiver_through_the_relay() -> None:
    # Triton → OtlpRelay → receiver: only protobuf arrives, each trace continued as sent
    with OtlpReceiver() as rx, OtlpRelay(rx.url) as relay:
        options = TritonOptions(
            model_repository=default_model_repository(),
            models=(MODEL,),
            otlp_traces_url=relay.url,
            otlp_schedule_delay_ms=100,
        )
        # Triton now and then starts a trace of its own (see above): three calls
        calls = [(secrets.token_hex(16), secrets.token_hex(8)) for _ in range(3)]
        with TritonServer(options) as srv:
            async with InferenceServerClient(srv.grpc_address) as client:
                for trace_id, caller in calls:
                    tensor = InferInput("TEXT", [1, 1], "BYTES")
                    tensor.set_data_from_numpy(np.array([[POLITE.encode()]], dtype=object))
                    headers = {"traceparent": f"00-{trace_id}-{caller}-01"}
                    await client.infer(MODEL, [tensor], client_timeout=10, headers=headers)

            def complete(spans: list[Span]) -> bool:
                return any(_has_model_span(t)(spans) for t, _ in calls)

            spans = await asyncio.to_thread(rx.wait_for_spans, complete, 15)
        assert complete(spans), spans
        for trace_id, caller in calls:
            if _has_model_span(trace_id)(spans):
                assert _root(_triton_spans(spans, trace_id))["parent_span_id"] == caller
        assert {ctype for _, ctype in rx.requests()} == {"application/x-protobuf"}
        assert rx.errors() == []
        assert relay.stats.forwarded >= 1
        assert (relay.stats.rejected, relay.stats.dropped, relay.stats.failed) == (0, 0, 0)


async def test_failed_call_marks_span_with_error_type(receiver: OtlpReceiver) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "quorum-err"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.url)))
    trace_id = secrets.token_hex(16)
    with socket.socket() as sock:  # a port nobody listens on once released
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        async with InferenceServerClient(f"127.0.0.1:{port}") as client:
            scorer = TritonScorer(client, tracer_provider=provider)
            headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
            with pytest.raises(Unavailable):
                await scorer.score(MODEL, [POLITE], timeout_s=5, headers=headers)
    finally:
        provider.shutdown()
    spans = [s for s in receiver.spans() if s["trace_id"] == trace_id]
    assert len(spans) == 1
    assert spans[0]["attributes"]["error.type"] == "TRITON_UNAVAILABLE"


# -- command line -------------------------------------------------------------------------------


def _start_cli(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "quorum.tritonserver", "--log-file", str(tmp_path / "t.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    info: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            key, _, value = line.strip().partition(" ")
            info[key] = value
            if key == "models":
                break
        assert set(info) >= {"pid", "grpc", "http", "metrics", "models"}, info
    except BaseException:
        _reap(proc)
        raise
    return proc, info


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _flag_of(pid: int, flag: str) -> str:
    """The value of ``flag=`` on the command line of process ``pid``."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return next(a.removeprefix(flag) for a in args if a.startswith(flag))


def _shm_prefix_of(pid: int) -> str:
    return _flag_of(pid, "--backend-config=python,shm-region-prefix-name=")


def test_cli_runs_until_sigint(tmp_path: Path) -> None:
    proc, info = _start_cli(tmp_path)
    try:
        assert info["models"] == ",".join(ALL_MODELS)
        r = httpx.get(f"http://{info['http']}/v2/models/{MODEL}/ready", timeout=5)
        assert r.status_code == 200
        pid = int(info["pid"])
        prefix = _shm_prefix_of(pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert _wait_gone([pid], 5) == []
        assert list(SHM_DIR.glob(f"{prefix}*")) == []
    finally:
        _reap(proc)


def test_no_orphan_when_parent_is_killed(tmp_path: Path) -> None:
    proc, info = _start_cli(tmp_path)
    pid = int(info["pid"])
    prefix = _shm_prefix_of(pid)
    backend_dir = Path(_flag_of(pid, "--backend-directory="))
    stubs = _pids_with(prefix)
    assert stubs
    try:
        proc.kill()  # SIGKILL: the parent gets no chance to clean up
        proc.wait()
        # PR_SET_PDEATHSIG sends SIGTERM; Triton shuts down and removes its shm itself.
        assert _wait_gone([pid, *stubs], 20) == []
        assert list(SHM_DIR.glob(f"{prefix}*")) == []
        # Only the launcher's temporary directory is left; the next start removes it.
        assert backend_dir.is_dir()
        _remove_stale_leftovers()
        assert not backend_dir.parent.exists()
    finally:
        _reap(proc)
        shutil.rmtree(backend_dir.parent, ignore_errors=True)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        for path in SHM_DIR.glob(f"{prefix}*"):
            path.unlink()
