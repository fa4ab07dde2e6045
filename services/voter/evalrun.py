"""``quorum eval``: every judge and the ensembles on held-out texts, as one table.

Held out means the test splits, which no judge was trained on. Each is cut in two halves by a
hash of the text (:func:`half`): ``quorum voter fit`` fits on one, ``quorum eval`` reports on
the other, so the fitted row is held out too.

It starts its own Triton (every model in the repository, on free loopback ports) unless given
one, builds the voter's judges from the registry exactly as the voter does, asks every judge
about every text (the judges of one text at once, ``concurrency`` texts at a time), and then
scores each system offline over the same votes (:mod:`services.voter.evaluation`).

Latency columns: a judge's own calls, measured here under that concurrency; an ensemble's is
the slowest of its judges per text (they run in parallel in the voter; the voter's own
overhead is in ``bench/bench_voter.py``). ``--simulated`` adds a remote LLM judge served by
the provider simulator, whose verdicts come from keyword lists (its rows say so), priced as
gemini-2.5-flash. With both local and remote judges, a cascade row replays the cascade over
the same votes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from tritonclient.grpc import aio as triton_aio

from quorum import datasets
from quorum.backends.openai import OpenAIChat
from quorum.backends.transport import ProviderClient
from quorum.backends.triton import TritonScorer
from quorum.backends.types import TokenUsage
from quorum.cost.v1 import cost_pb2_grpc
from quorum.ids import DEFAULT_TENANT
from quorum.money import NoExchangeRate
from quorum.pricing import PriceNotFound, bill
from quorum.registry import Registry, TritonBackend, load_registry
from quorum.simulator import ProviderSimulator
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository
from quorum.usage import Meter, MeterSettings
from services.voter import fitting
from services.voter.config import policy_from
from services.voter.evaluation import (
    SET_CATEGORIES,
    Ballots,
    Row,
    System,
    cascade,
    confusion,
    ensemble,
    escalated,
    latency,
    single,
)
from services.voter.judges import Judge, build_judges, pending_of
from services.voter.voting import Pending, Policy, Status, Vote

log = logging.getLogger(__name__)

SIMULATED_JUDGE = "sim-judge"
#: judges trained on a set's own data: their scores there say how well they fit it
IN_SAMPLE = {("profanity-check", "toxic")}


@dataclass
class Collected:
    """What every judge said about every text of one set."""

    labels: list[int] = field(default_factory=list)
    ballots: list[list[Vote]] = field(default_factory=list)
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    usage: dict[str, TokenUsage] = field(default_factory=dict)


def joined(a: Collected, b: Collected) -> Collected:
    """``a``'s texts then ``b``'s (the same ballot lists, so a ballot keeps its identity)."""
    usage = {
        j: a.usage.get(j, TokenUsage()) + b.usage.get(j, TokenUsage()) for j in {*a.usage, *b.usage}
    }
    return Collected(
        labels=a.labels + b.labels,
        ballots=a.ballots + b.ballots,
        latency_ms={j: a.latency_ms.get(j, []) + b.latency_ms.get(j, []) for j in a.latency_ms},
        usage=usage,
    )


async def collect(
    judges: Mapping[str, Judge],
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    concurrency: int,
    timeout_s: float,
) -> Collected:
    out = Collected(labels=list(labels))
    out.ballots = [[] for _ in texts]
    # by text, in the order of ``texts``: an ensemble's latency is its slowest judge's
    out.latency_ms = {name: [0.0] * len(texts) for name in judges}
    gate = asyncio.Semaphore(concurrency)

    async def one_judge(name: str, judge: Judge, i: int, text: str) -> Vote:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                result = await judge.judge(
                    text, timeout_s=timeout_s, usage_key=f"eval:{i}:{name}", tenant=DEFAULT_TENANT
                )
        except Exception as e:  # an abstention, as in the voter
            vote = Vote(name, 1.0, Status.ERROR, error=type(e).__name__)
        else:
            vote = result.vote
            out.usage[name] = out.usage.get(name, TokenUsage()) + result.usage
        out.latency_ms[name][i] = (time.perf_counter() - t0) * 1000
        return vote

    async def one_text(i: int, text: str) -> None:
        async with gate:
            out.ballots[i] = list(
                await asyncio.gather(*(one_judge(n, j, i, text) for n, j in judges.items()))
            )

    await asyncio.gather(*(one_text(i, t) for i, t in enumerate(texts)))
    return out


#: a fitted policy: one for every text, or one for each text (cross-fitting: each half of a set
#: is scored by the policy fitted on the other half)
Fitted = Policy | Callable[[Ballots], Policy]


def policy_per_text(make: Callable[[Policy], Callable[[Ballots], bool]], fitted: Fitted) -> System:
    """``make(policy)``, with the policy ``fitted`` gives each text."""
    if isinstance(fitted, Policy):
        return make(fitted)
    chosen = fitted
    return lambda votes: make(chosen(votes))(votes)


def systems(
    judges: Sequence[str],
    policy: Policy,
    fitted: Fitted | None,
) -> list[tuple[str, System, tuple[str, ...]]]:
    """(name, system, the judges it asks) for every row of a set."""
    rows: list[tuple[str, System, tuple[str, ...]]] = [(j, single(j), (j,)) for j in judges]
    everyone = tuple(judges)
    rows.append(("ensemble (configured weights)", ensemble(policy), everyone))
    rows.append(("ensemble (equal weights)", ensemble(policy, weights={}), everyone))
    if fitted is not None:
        rows.append(("ensemble (fitted)", policy_per_text(ensemble, fitted), everyone))
    return rows


def _cost_per_1k(registry: Registry, judge: str, usage: TokenUsage, n: int, at_us: int) -> float:
    """What ``judge`` cost per 1,000 texts at today's price; NaN when it has no price (unknown
    is not free)."""
    spec = registry.get(judge)
    try:
        micros = bill(spec.name, spec.pricing, usage, at_us, registry.rates).cost.micros
    except (PriceNotFound, NoExchangeRate):
        return math.nan
    return micros / 1e6 * 1000 / n


def rows_for(
    dataset: str,
    got: Collected,
    registry: Registry,
    policy: Policy,
    *,
    fitted: Fitted | None = None,
) -> list[Row]:
    judges = [v.model for v in got.ballots[0]] if got.ballots else []
    n = len(got.labels)
    now = time.time_ns() // 1000
    cost_per_1k = {
        j: _cost_per_1k(registry, j, got.usage.get(j, TokenUsage()), n, now) for j in judges
    }
    out = []
    for name, system, asked in systems(judges, policy, fitted):
        flagged = [system(b) for b in got.ballots]
        if len(asked) == 1:
            p50, p99 = latency(got.latency_ms.get(asked[0], []))
        else:
            per_text = [max(col) for col in zip(*(got.latency_ms[j] for j in asked), strict=True)]
            p50, p99 = latency(per_text)
        notes = []
        if any((j, dataset) in IN_SAMPLE for j in asked):
            notes.append(
                "in-sample (" + ", ".join(j for j in asked if (j, dataset) in IN_SAMPLE) + ")"
            )
        if SIMULATED_JUDGE in asked:
            notes.append("simulated judge")
        out.append(
            Row(
                system=name,
                dataset=dataset,
                scores=confusion(got.labels, flagged),
                p50_ms=p50,
                p99_ms=p99,
                cost_per_1k=sum(cost_per_1k[j] for j in asked),
                notes="; ".join(notes),
            )
        )
    local = frozenset(j for j in judges if isinstance(registry.get(j).backend, TritonBackend))
    if local and len(local) < len(judges):
        remote = [pending_of(registry.get(j)) for j in judges if j not in local]
        for label, chosen in (("cascade (local first)", policy), ("cascade (fitted)", fitted)):
            if chosen is not None:  # the fitted one: its weights, thresholds and margin
                out.append(
                    _cascade_row(
                        label, dataset, got, chosen, local=local, pending=remote, cost=cost_per_1k
                    )
                )
    return out


def _cascade_row(
    system: str,
    dataset: str,
    got: Collected,
    policy: Fitted,
    *,
    local: frozenset[str],
    pending: Sequence[Pending],
    cost: Mapping[str, float],
) -> Row:
    """The cascade, replayed over the same votes: the local judges' latency, plus the remote
    ones' (``pending``) for the texts it escalates (asked one after the other)."""
    asks = policy_per_text(lambda p: escalated(p, local, pending), policy)
    up = [asks(b) for b in got.ballots]
    remote = [p.model for p in pending]
    per_text = []
    for i, esc in enumerate(up):
        t = max(got.latency_ms[j][i] for j in local)
        if esc:
            t += max(got.latency_ms[j][i] for j in remote)
        per_text.append(t)
    p50, p99 = latency(per_text)
    rate = sum(up) / len(up) if up else 0.0
    simulated = "; simulated judge" if SIMULATED_JUDGE in remote else ""
    replayed = policy_per_text(lambda p: cascade(p, local, pending), policy)
    return Row(
        system=system,
        dataset=dataset,
        scores=confusion(got.labels, [replayed(b) for b in got.ballots]),
        p50_ms=p50,
        p99_ms=p99,
        cost_per_1k=sum(cost[j] for j in local) + rate * sum(cost[j] for j in remote),
        notes=f"asked the remote judges for {rate:.0%} of texts{simulated}",
    )


@contextlib.asynccontextmanager
async def _judges(
    data: dict[str, Any], triton_address: str, simulated: bool
) -> AsyncIterator[tuple[dict[str, Judge], Registry]]:
    stack = contextlib.AsyncExitStack()
    async with stack:
        if simulated:
            sim = stack.enter_context(ProviderSimulator())
            data["providers"]["simulator-eval"] = {"base_url": sim.url, "simulated": True}
            data["models"][SIMULATED_JUDGE] = {
                "provider": "simulator-eval",
                # priced as gemini-2.5-flash, so that its cost column means something
                "input_per_mtok": "0.50",
                "output_per_mtok": "2.50",
                "moderation": {"categories": ["violence", "adult", "hate", "spam", "harassment"]},
            }
        registry = load_registry(data).resolve_keys({})  # remote judges only if simulated
        triton = triton_aio.InferenceServerClient(url=triton_address)
        stack.push_async_callback(triton.close)
        http = await stack.enter_async_context(
            contextlib.aclosing(ProviderClient(max_connections=100))
        )
        channel = await stack.enter_async_context(grpc.aio.insecure_channel("127.0.0.1:9"))
        journal = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "eval.journal"
        # the simulated judge's calls are billed into a scratch journal, with no budgets
        settings = MeterSettings(reserve=False)
        meter = Meter(
            cost_pb2_grpc.CostServiceStub(channel), journal, source="eval", settings=settings
        )
        await meter.start()
        stack.push_async_callback(meter.stop, 0.0)
        judges = build_judges(registry, TritonScorer(triton), OpenAIChat(http, {}), meter)
        yield judges, registry


#: the two halves of every test split: the fit uses one, the evaluation the other
HALVES = ("fit", "eval")


def half(text: str) -> str:
    """Which half of a test split ``text`` belongs to (a hash of it: stable, no overlap)."""
    return HALVES[hashlib.sha256(text.encode("utf-8")).digest()[0] & 1]


async def _collect_sets(
    judges: Mapping[str, Judge], opts: Options, part: str
) -> AsyncIterator[tuple[str, Collected]]:
    """Every judge's votes on ``part`` (a half of each set's test split, see :data:`HALVES`):
    the text-heads judge was trained on the train splits, so votes there are in-sample for
    it and would teach the fit to trust it too much."""
    for name in opts.sets:
        limit = 2 * opts.limit if opts.limit else None
        examples = [e for e in datasets.load(name, "test", limit=limit) if half(e.text) == part]
        got = await collect(
            judges,
            [e.text for e in examples],
            [e.label for e in examples],
            concurrency=opts.concurrency,
            timeout_s=30.0,
        )
        log.info("asked every judge about %s (%s half, %d texts)", name, part, len(examples))
        yield name, got


@dataclass(frozen=True)
class Options:
    """What to ask about: the sets, how many texts of each, which Triton, and whether a
    simulated remote judge takes part."""

    sets: Sequence[str]
    limit: int | None = 1000
    triton_address: str | None = None
    simulated: bool = False
    concurrency: int = 16


async def evaluate(data: dict[str, Any], opts: Options, fitted: Policy | None = None) -> list[Row]:
    policy = policy_from(data.get("voter", {}))
    rows: list[Row] = []
    assert opts.triton_address is not None
    async with _judges(data, opts.triton_address, opts.simulated) as (judges, registry):
        async for name, got in _collect_sets(judges, opts, "eval"):
            rows += rows_for(name, got, registry, policy, fitted=fitted)
    return rows


def _examples(sets: Mapping[str, Collected]) -> list[fitting.Example]:
    return [
        fitting.Example(name, y, b)
        for name, got in sets.items()
        for y, b in zip(got.labels, got.ballots, strict=True)
    ]


def _fit(judges: Mapping[str, Judge], sets: Mapping[str, Collected], base: Policy) -> fitting.Fit:
    cats = {
        n: tuple(j.spec.moderation.categories) if j.spec.moderation else ()
        for n, j in judges.items()
    }
    local = [n for n, j in judges.items() if isinstance(j.spec.backend, TritonBackend)]
    return fitting.fit(_examples(sets), cats, base, local)


async def fit_on_train(data: dict[str, Any], opts: Options) -> fitting.Fit:
    base = policy_from(data.get("voter", {}))
    assert opts.triton_address is not None
    async with _judges(data, opts.triton_address, opts.simulated) as (judges, _):
        sets = {name: got async for name, got in _collect_sets(judges, opts, "fit")}
        return _fit(judges, sets, base)


async def cross_evaluate(data: dict[str, Any], opts: Options) -> list[Row]:
    """Every judge and ensemble on both halves of the test splits. The fitted rows score each
    half with the policy fitted on the other (two fits, each on texts the other scores), so
    every text is held out from the fit that judges it and each set counts twice the texts
    that :func:`evaluate` reports on."""
    policy = policy_from(data.get("voter", {}))
    rows: list[Row] = []
    assert opts.triton_address is not None
    async with _judges(data, opts.triton_address, opts.simulated) as (judges, registry):
        halves = {
            part: {name: got async for name, got in _collect_sets(judges, opts, part)}
            for part in HALVES
        }
        fitted_on = {part: _fit(judges, halves[part], policy).policy(policy) for part in HALVES}
    for name in opts.sets:
        scored, other = halves["eval"][name], halves["fit"][name]
        chosen = {id(b): fitted_on["fit"] for b in scored.ballots}
        chosen |= {id(b): fitted_on["eval"] for b in other.ballots}
        both = joined(scored, other)
        rows += rows_for(name, both, registry, policy, fitted=lambda b, c=chosen: c[id(b)])
    return rows


@contextlib.contextmanager
def _prepared(opts: Options) -> Iterator[Options]:
    """Check the sets, fetch what is missing, and start Triton unless one is given."""
    for s in opts.sets:
        if s not in SET_CATEGORIES:
            raise ValueError(f"unknown set {s!r}; known: {', '.join(SET_CATEGORIES)}")
    datasets.fetch([s for s in opts.sets if s in datasets.PACKAGED])
    if opts.triton_address is not None:
        yield opts
        return
    with TritonServer(TritonOptions(model_repository=default_model_repository())) as triton:
        yield replace(opts, triton_address=triton.grpc_address)


def run(data: dict[str, Any], opts: Options, fitted: Policy | None = None) -> list[Row]:
    """Every judge and ensemble on the evaluation half of the test splits."""
    with _prepared(opts) as ready:
        return asyncio.run(evaluate(data, ready, fitted))


def run_cross(data: dict[str, Any], opts: Options) -> list[Row]:
    """Every judge and ensemble on both halves of the test splits, cross-fitted."""
    with _prepared(opts) as ready:
        return asyncio.run(cross_evaluate(data, ready))


def run_fit(data: dict[str, Any], opts: Options) -> fitting.Fit:
    """The fitted policy from the fitting half of the test splits."""
    with _prepared(opts) as ready:
        return asyncio.run(fit_on_train(data, ready))
