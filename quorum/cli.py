"""The ``quorum`` command.

    quorum up                 start Triton, cost, voter, router (and the simulator when no
                              provider key is set); Ctrl-C or SIGTERM stops everything
    quorum demo               start the mesh on free ports, run the examples, stop it
    quorum moderate TEXT      ask the voter (every model's vote is shown)
    quorum moderate --file F  every line of F (- for stdin), in ModerateBatch calls: a line
                              of verdict a text [--batch N]
    quorum complete PROMPT    ask the router [--model M] [--task T] [--stream]
    quorum usage              usage and cost so far, per model
    quorum cost report        usage and cost by model, tenant, day or month [--csv]
    quorum cost estimate      what a call would cost now --model M --input-tokens N
                              --output-tokens N [--cached-input-tokens N] [--currency C]
    quorum keys create|list|revoke
                              API keys (tenant and role) in the keys file the services read
    quorum budget set|status|delete|watch
                              a tenant's monthly budgets: set one, see where they stand,
                              follow them as they change
    quorum eval               every judge and the ensembles on the held-out labelled sets
    quorum voter fit          fit judge weights and thresholds on held-out texts
    quorum triton check [REPO]
                              check a Triton model repository (default: the one `quorum
                              up` serves) before Triton loads it; exit 1 on errors

``moderate``, ``complete``, ``usage``, ``cost`` and ``budget`` talk to a running mesh at the
addresses ``quorum up`` uses by default (override with --router/--voter/--cost); ``--json``
prints the whole response in protobuf's JSON mapping, every field included.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from quorum import config, demo, protoconv, telemetry
from quorum.auth import AuthSettings, Key, KeyStore, Role
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.errors import QuorumError
from quorum.formatting import (
    format_budget_event,
    format_budgets,
    format_completion,
    format_estimate,
    format_moderation,
    format_report,
    format_usage,
)
from quorum.grpcerrors import from_rpc_error, from_rpc_status
from quorum.mesh import Mesh, MeshOptions
from quorum.registry import ConfigError
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.signals import StopSignals
from quorum.tls import TlsSettings, blocking_channel
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc

# -- printing ---------------------------------------------------------------------------------


def _print_json(msg: Message, *, lines: bool = False) -> None:
    """The protobuf JSON mapping, with every field: a false flag or a zero count is shown,
    not left out. ``lines``: compact, one object a line (JSON Lines, for streams)."""
    print(
        json_format.MessageToJson(
            msg,
            preserving_proto_field_name=False,
            always_print_fields_with_no_presence=True,
            indent=None if lines else 2,
        ),
        flush=lines,
    )


def _show(args: argparse.Namespace, resp: Message, fmt: Callable[[Any], str]) -> int:
    if args.json:
        _print_json(resp)
    else:
        print(fmt(resp))
    return 0


def _fail(err: grpc.RpcError, service: str) -> int:
    assert isinstance(err, grpc.Call)
    qerr = from_rpc_error(err, service=service)  # type: ignore[arg-type]
    print(f"error: {err.code().name}: {err.details()} [{qerr.reason}]", file=sys.stderr)
    return 1


# -- client commands ----------------------------------------------------------------------------


def _key() -> tuple[tuple[str, str], ...]:
    """The caller's API key, from $QUORUM_API_KEY (never a flag: flags show in `ps`)."""
    key = os.environ.get("QUORUM_API_KEY", "")
    return (("authorization", f"Bearer {key}"),) if key else ()


def _channel(args: argparse.Namespace, name: str) -> grpc.Channel:
    """A channel to service ``name``: TLS when the configuration's ``[tls]`` is enabled (the
    CLI reads the same configuration as the services: --config, $QUORUM_CONFIG, QUORUM_*)."""
    tls = TlsSettings.from_config(config.load(args.config), os.environ)
    return blocking_channel(_addr(args, name), tls)


def _addr(args: argparse.Namespace, name: str) -> str:
    given = getattr(args, name, None)
    if given:
        return str(given)
    return str(config.load(args.config)[name]["address"])


def cmd_moderate(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.file is None):
        print("error: give a TEXT or --file, one of them", file=sys.stderr)
        return 2
    if args.file is not None:
        return _moderate_file(args)
    with _channel(args, "voter") as ch:
        try:
            resp = voter_pb2_grpc.VoterServiceStub(ch).Moderate(
                voter_pb2.ModerateRequest(text=args.text, models=args.model or []),
                timeout=args.timeout,
                metadata=_key(),
            )
        except grpc.RpcError as e:
            return _fail(e, "voter")
    return _show(args, resp, format_moderation)


def _moderate_file(args: argparse.Namespace) -> int:
    """Each non-blank line of ``args.file`` a text, ``args.batch`` texts a ModerateBatch call;
    a line out per text, in order: its line number and verdict (JSON Lines with --json). Exit
    1 when a text has no verdict, or at the first call that fails (what was judged before it
    is printed)."""
    if not 1 <= args.batch <= 10_000:
        print("error: --batch must be 1 to 10000", file=sys.stderr)
        return 2
    try:
        raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"error: cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    lines = [(n, line) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
    failed = False
    with _channel(args, "voter") as ch:
        stub = voter_pb2_grpc.VoterServiceStub(ch)
        for start in range(0, len(lines), args.batch):
            chunk = lines[start : start + args.batch]
            try:
                resp = stub.ModerateBatch(
                    voter_pb2.ModerateBatchRequest(
                        texts=[t for _, t in chunk], models=args.model or []
                    ),
                    timeout=args.timeout,
                    metadata=_key(),
                )
            except grpc.RpcError as e:
                return _fail(e, "voter")
            for (n, text), result in zip(chunk, resp.results, strict=True):
                failed |= result.HasField("error")
                print(_batch_line(n, text, result, as_json=args.json), flush=True)
    return 1 if failed else 0


def _batch_line(
    line: int, text: str, result: voter_pb2.ModerateBatchResult, *, as_json: bool
) -> str:
    if as_json:
        body = json_format.MessageToDict(result, always_print_fields_with_no_presence=True)
        return json.dumps({"line": line, **body}, ensure_ascii=False)
    shown = text if len(text) <= 60 else text[:57] + "..."
    if result.HasField("error"):
        err = from_rpc_status(result.error, service="voter")
        return f"{line}\tERROR {err.reason}: {err.message}\t{shown!r}"
    m = result.moderated
    verdict = "SAFE" if m.is_safe else "UNSAFE"
    review = ", requires review" if m.requires_review else ""
    reasons = f" ({'; '.join(m.reasons)})" if m.reasons and not m.is_safe else ""
    return f"{line}\t{verdict} {m.confidence:.2f}{review}{reasons}\t{shown!r}"


def _request(args: argparse.Namespace) -> router_pb2.CompleteRequest:
    mode = {
        None: router_pb2.MODERATION_MODE_UNSPECIFIED,
        "none": router_pb2.MODERATION_MODE_NONE,
        "input": router_pb2.MODERATION_MODE_INPUT,
        "output": router_pb2.MODERATION_MODE_OUTPUT,
        "both": router_pb2.MODERATION_MODE_BOTH,
    }[args.moderation]
    req = router_pb2.CompleteRequest(
        prompt=args.prompt, model=args.model or "", task=args.task or "", moderation=mode,
        max_tokens=args.max_tokens,
    )  # fmt: skip
    if args.model_id is not None:
        req.model_id = args.model_id
    return req


def cmd_complete(args: argparse.Namespace) -> int:
    with _channel(args, "router") as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        try:
            if args.stream:
                summary = None
                for event in stub.CompleteStream(
                    router_pb2.CompleteStreamRequest(request=_request(args)),
                    timeout=args.timeout,
                    metadata=_key(),
                ):
                    if args.json:  # JSON Lines: one event a line, the summary last
                        _print_json(event, lines=True)
                    elif event.HasField("summary"):
                        summary = event.summary
                    else:
                        print(event.delta, end="", flush=True)
                if summary is not None:
                    print("\n" + format_completion(summary, with_text=False))
                return 0
            resp = stub.Complete(_request(args), timeout=args.timeout, metadata=_key())
        except grpc.RpcError as e:
            return _fail(e, "router")
    return _show(args, resp, format_completion)


def cmd_usage(args: argparse.Namespace) -> int:
    with _channel(args, "cost") as ch:
        try:
            resp = cost_pb2_grpc.CostServiceStub(ch).GetUsageSummary(
                cost_pb2.GetUsageSummaryRequest(model=args.model or ""),
                timeout=args.timeout,
                metadata=_key(),
            )
        except grpc.RpcError as e:
            return _fail(e, "cost")
    return _show(args, resp, format_usage)


def _micros(amount: str) -> int:
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise SystemExit(f"error: {amount!r} is not an amount such as 100 or 12.50") from None
    if not value.is_finite():
        raise SystemExit(f"error: {amount!r} is not an amount such as 100 or 12.50")
    return int((value * 1_000_000).to_integral_value(rounding=ROUND_HALF_UP))


_GROUPINGS = {
    "model": cost_pb2.REPORT_GROUPING_MODEL,
    "tenant": cost_pb2.REPORT_GROUPING_TENANT,
    "day": cost_pb2.REPORT_GROUPING_DAY,
    "month": cost_pb2.REPORT_GROUPING_MONTH,
}


def _when(text: str, time_zone: str) -> timestamp_pb2.Timestamp:
    """``YYYY-MM-DD`` (midnight in ``time_zone``) or an ISO 8601 time (``time_zone`` when it
    names no offset) as a Timestamp."""
    try:
        when = datetime.fromisoformat(text)
        tz = ZoneInfo(time_zone)
    except (ValueError, ZoneInfoNotFoundError):
        raise SystemExit(
            f"error: {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time"
        ) from None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when if when.tzinfo else when.replace(tzinfo=tz))
    return ts


def cmd_cost(args: argparse.Namespace) -> int:
    return _cost_estimate(args) if args.cost_command == "estimate" else _cost_report(args)


def _cost_report(args: argparse.Namespace) -> int:
    if args.compare:
        return _cost_compare(args)
    req = cost_pb2.GetUsageReportRequest(
        tenant=args.tenant or "", model=args.model or "", group_by=_GROUPINGS[args.by],
        time_zone=args.time_zone,
    )  # fmt: skip
    if args.since:
        req.start_time.CopyFrom(_when(args.since, args.time_zone))
    if args.until:
        req.end_time.CopyFrom(_when(args.until, args.time_zone))
    with _channel(args, "cost") as ch:
        try:
            resp = cost_pb2_grpc.CostServiceStub(ch).GetUsageReport(
                req, timeout=args.timeout, metadata=_key()
            )
        except grpc.RpcError as e:
            return _fail(e, "cost")
    if args.csv:
        # an official cost that cannot be computed is an empty cell, never 0; the column after
        # it says how many of the row's requests lack one. The real rows come first, then the
        # simulated calls' rows (simulated = true: what they would have cost, no real spend)
        def amount(m: common_pb2.Money, present: bool = True) -> str:
            return protoconv.format_money(m).split()[0] if present else ""

        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow([args.by, "currency", "requests", "input_tokens", "output_tokens",
                      "cost", "estimated_requests", "official_cost", "saving",
                      "requests_without_official_cost", "simulated"])  # fmt: skip
        for simulated, rows in ((False, resp.rows), (True, resp.simulated_rows)):
            for r in rows:
                known = r.HasField("official_cost")
                out.writerow([r.key, r.cost.currency, r.requests, r.usage.input_tokens,
                              r.usage.output_tokens, amount(r.cost), r.estimated_requests,
                              amount(r.official_cost, known), amount(r.saving, known),
                              r.requests_without_official_cost,
                              "true" if simulated else "false"])  # fmt: skip
        return 0
    return _show(args, resp, lambda r: format_report(r, args.by))


def _mix(text: str) -> dict[str, float]:
    """``MODEL=WEIGHT,...`` (weights need not sum to 1: they are normalised)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or not name or not value > 0:
            raise argparse.ArgumentTypeError(f"{part!r} is not MODEL=WEIGHT with WEIGHT > 0")
        out[name] = value
    if not out:
        raise argparse.ArgumentTypeError("name at least one MODEL=WEIGHT")
    return out


def _cost_compare(args: argparse.Namespace) -> int:
    """The brief's table: what ``--tokens`` a month would cost on each priced model alone, on
    a weighted mix, and on a voting panel (every judge reads every text), at today's prices
    (EstimateCost, so the cost service's prices and exchange rates decide)."""
    tokens = args.tokens
    out_tokens = round(tokens * args.output_share)
    usage = common_pb2.Usage(input_tokens=tokens - out_tokens, output_tokens=out_tokens)
    currency = (args.currency or "USD").upper()
    with _channel(args, "cost") as ch:
        stub = cost_pb2_grpc.CostServiceStub(ch)
        try:
            listed = stub.ListPrices(cost_pb2.ListPricesRequest(), timeout=args.timeout,
                                     metadata=_key())  # fmt: skip
            costs: dict[str, int] = {}
            for price in listed.prices:
                if price.input_micros_per_mtok == 0 and price.output_micros_per_mtok == 0:
                    continue  # local models: nothing to compare
                est = stub.EstimateCost(
                    cost_pb2.EstimateCostRequest(model=price.model, usage=usage,
                                                 currency=currency),
                    timeout=args.timeout, metadata=_key(),
                )  # fmt: skip
                money = est.converted if est.HasField("converted") else est.cost
                costs[price.model] = money.micros
        except grpc.RpcError as e:
            return _fail(e, "cost")
    mix = args.mix or dict.fromkeys(costs, 1.0)
    unknown = sorted(set(mix) - set(costs))
    if unknown:
        print(f"error: no priced model called {', '.join(unknown)}", file=sys.stderr)
        return 1
    total = sum(mix.values())
    mixed = round(sum(costs[m] * w / total for m, w in mix.items()))
    panel = sum(costs[m] for m in mix)
    rows = [(m, c) for m, c in sorted(costs.items(), key=lambda mc: mc[1], reverse=True)]
    rows.append(("mix " + ", ".join(f"{m} {w / total:.0%}" for m, w in mix.items()), mixed))
    rows.append(("voting panel: " + " + ".join(mix), panel))
    if args.json:
        print(json.dumps({
            "tokens": tokens, "inputTokens": usage.input_tokens,
            "outputTokens": usage.output_tokens, "currency": currency,
            "rows": [{"what": w, "micros": str(c)} for w, c in rows],
        }, indent=2))  # fmt: skip
        return 0
    print(f"{tokens:,} tokens a month ({usage.input_tokens:,} in, {usage.output_tokens:,} out), "
          f"at today's prices:")  # fmt: skip
    width = max(len(w) for w, _ in rows)
    for what, micros in rows:
        money = protoconv.format_money(common_pb2.Money(micros=micros, currency=currency))
        print(f"  {what:<{width}}  {money}")
    return 0


def _cost_estimate(args: argparse.Namespace) -> int:
    """``quorum cost estimate``: the cost service's EstimateCost (it validates the numbers)."""
    req = cost_pb2.EstimateCostRequest(
        model=args.model,
        usage=common_pb2.Usage(
            input_tokens=args.input_tokens,
            output_tokens=args.output_tokens,
            cached_input_tokens=args.cached_input_tokens,
        ),
        currency=(args.currency or "").upper(),
    )
    with _channel(args, "cost") as ch:
        try:
            resp = cost_pb2_grpc.CostServiceStub(ch).EstimateCost(
                req, timeout=args.timeout, metadata=_key()
            )
        except grpc.RpcError as e:
            return _fail(e, "cost")
    return _show(args, resp, format_estimate)


def _tokens(text: str) -> int:
    """A token count as the API can carry it (int64); the cost service judges the rest."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is out of range")
    return value


def cmd_budget(args: argparse.Namespace) -> int:
    with _channel(args, "cost") as ch:
        stub = cost_pb2_grpc.CostServiceStub(ch)
        try:
            if args.budget_command == "set":
                b = cost_pb2.Budget(
                    tenant=args.tenant, model=args.model or "",
                    limit=common_pb2.Money(micros=_micros(args.limit), currency=args.currency),
                    time_zone=args.time_zone, alert_thresholds=args.alert or [],
                    alert_only=args.alert_only,
                )  # fmt: skip
                resp = stub.SetBudget(
                    cost_pb2.SetBudgetRequest(budget=b), timeout=args.timeout, metadata=_key()
                )
                return _show(args, resp, lambda r: format_budgets([r.status]))
            if args.budget_command == "delete":
                req = cost_pb2.DeleteBudgetRequest(tenant=args.tenant, model=args.model or "")
                return _show(
                    args,
                    stub.DeleteBudget(req, timeout=args.timeout, metadata=_key()),
                    lambda r: "deleted",
                )
            if args.budget_command == "status":
                found = stub.GetBudgetStatus(
                    cost_pb2.GetBudgetStatusRequest(tenant=args.tenant or ""),
                    timeout=args.timeout,
                    metadata=_key(),
                )
                return _show(args, found, lambda r: format_budgets(r.budgets))
            watch = stub.WatchBudget(
                cost_pb2.WatchBudgetRequest(tenant=args.tenant),
                timeout=args.timeout,
                metadata=_key(),
            )
            for event in watch:
                _show(args, event, lambda e: format_budget_event(e.status, e.new_alerts))
        except grpc.RpcError as e:
            if args.budget_command == "watch" and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                return 0  # watched for --timeout seconds
            return _fail(e, "cost")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Edit the keys file this machine's services read ([auth] keys_file)."""
    store = KeyStore(AuthSettings.from_config(config.load(args.config), os.environ).keys_file)

    def shown(k: Key) -> dict[str, Any]:
        return {
            "id": k.id, "tenant": k.tenant, "role": k.role, "name": k.name,
            "createdAt": _iso(k.created_at),
            "revokedAt": _iso(k.revoked_at) if k.revoked_at else None, "active": k.active,
        }  # fmt: skip

    try:
        if args.keys_command == "create":
            key, token = store.create(args.tenant, Role(args.role), args.name or "")
            if args.json:
                print(json.dumps(shown(key) | {"key": token}, indent=2))
            else:
                print(f"key {key.id} for tenant {key.tenant} (role {key.role}); shown once:")
                print(token)
        elif args.keys_command == "list":
            keys = store.all()
            if args.json:
                print(json.dumps([shown(k) for k in keys], indent=2))
            for k in [] if args.json else keys:
                state = "active" if k.active else f"revoked {_iso(k.revoked_at or 0)}"
                print(f"{k.id}  {k.tenant:<20} {k.role:<8} {state:<30} {k.name}")
            if not keys and not args.json:
                print("no keys")
        else:
            key = store.revoke(args.id)
            print(json.dumps(shown(key), indent=2) if args.json else f"revoked {key.id}")
    except QuorumError as e:
        print(f"error: {e.message} [{e.reason}]", file=sys.stderr)
        return 1
    return 0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- mesh commands --------------------------------------------------------------------------------


def _print_mesh(mesh: Mesh, took_s: float) -> None:
    print(f"Quorum is up ({took_s:.1f} s):")
    for name in ("router", "voter", "cost", "triton", "simulator"):
        if name in mesh.addresses:
            scrape = f"  metrics {mesh.metrics[name]}" if name in mesh.metrics else ""
            print(f"  {name:<10} {mesh.addresses[name]:<16}{scrape}")
            if name == "router" and mesh.router_workers > 1:
                n = mesh.router_workers
                who = "worker 1" if n == 2 else f"workers 1-{n - 1}"
                port = "port" if n == 2 else f"{n - 1} ports"
                others = f" ({who}: metrics on the next {port})" if scrape else ""
                print(f"  {'':<10} {n} processes on that port{others}")
    print(f"  logs       {mesh.log_dir.resolve()}")
    if mesh.simulated_models:
        print(
            "No API key is set for: " + ", ".join(mesh.simulated_models) + ".\n"
            "  Completions with these models come from the provider SIMULATOR (simulated text).\n"
            "  Moderation uses the real local models only (judges without a key do not vote)."
        )
    if mesh.local_models:
        print(
            "Local chat models (real, on Triton): "
            + ", ".join(mesh.local_models)
            + "."
            + (
                f"\n  Requests that name no model or task are answered by {mesh.no_key_model} "
                "(no provider key is set)."
                if mesh.no_key_model
                else ""
            )
        )
    for name, modules in mesh.local_missing.items():
        print(
            f"Local chat model {name} is off: {', '.join(modules)} not installed (make local-llm)."
        )


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir or config.data_dir())
    mesh = Mesh(MeshOptions(data_dir=data_dir, config_path=args.config, simulator=args.simulator))
    stop = StopSignals().install()
    start = time.monotonic()
    print("starting Triton, cost, voter and router ...", flush=True)
    try:
        mesh.start()
        _print_mesh(mesh, time.monotonic() - start)
        print("Ctrl-C stops everything.", flush=True)
        policy = config.section(config.load(args.config), "mesh")
        restart = config.get_choice(policy, "on_failure", "mesh", ("stop", "restart"))
        max_restarts = config.get_int(policy, "max_restarts", "mesh")
        hang_after_s = config.get_float(policy, "hang_after_s", "mesh", minimum=0.0)
        restarts: dict[str, list[float]] = {}
        while not stop.wait(1.0):
            for name in mesh.hung_parts(hang_after_s) if hang_after_s > 0 else ():
                print(f"{name} has not answered its health checks for {hang_after_s:g} s; "
                      "killed it", file=sys.stderr, flush=True)  # fmt: skip
            for name, code in mesh.exited_parts():
                recent = [t for t in restarts.get(name, []) if time.monotonic() - t < 600]
                if restart == "stop" or len(recent) >= max_restarts:
                    # a mesh with a dead part must not look alive: stop it all, say why
                    why = "" if restart == "stop" else f" ({len(recent)} restarts in 10 min)"
                    print(
                        f"error: {name} (exit code {code}) stopped{why}; stopping the mesh "
                        f"(logs in {mesh.log_dir})",
                        file=sys.stderr,
                    )
                    return 1
                wait = min(2.0 ** len(recent), 30.0)  # back off: 1 s, 2 s, 4 s ...
                print(f"{name} (exit code {code}) stopped; restarting it in {wait:g} s",
                      file=sys.stderr, flush=True)  # fmt: skip
                if stop.wait(wait):
                    break
                restarts[name] = [*recent, time.monotonic()]
                mesh.restart(name)
                print(f"{name} is back", file=sys.stderr, flush=True)
        print("stopping ...", flush=True)
        return 0
    except QuorumError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    finally:
        mesh.stop()


def cmd_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="quorum-demo-") as tmp:
        data_dir = Path(args.data_dir or tmp)
        mesh = Mesh(
            MeshOptions(
                data_dir=data_dir, config_path=args.config, ephemeral_ports=True,
                simulator=args.simulator,
            )
        )  # fmt: skip
        print("Quorum demo: starting the mesh on free loopback ports ...", flush=True)
        start = time.monotonic()
        try:
            mesh.start()
            _print_mesh(mesh, time.monotonic() - start)
            return demo.run(mesh.addresses)
        except QuorumError as e:
            print(f"error: {e.message}", file=sys.stderr)
            return 1
        finally:
            print("\nstopping the mesh ...", flush=True)
            mesh.stop()
            print("stopped.")


def _eval_options(args: argparse.Namespace) -> Any:
    from services.voter.evalrun import Options

    return Options(
        sets=args.sets,
        limit=args.limit or None,
        triton_address=args.triton,
        simulated=args.simulated,
        concurrency=args.concurrency,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from quorum import datasets
    from services.voter import evalrun
    from services.voter.config import policy_from
    from services.voter.evaluation import format_table

    data = config.load(args.config)
    fitted = policy_from(config.load(args.fitted)["voter"]) if args.fitted else None
    try:
        if args.cross_fit:
            rows = evalrun.run_cross(data, _eval_options(args))
        else:
            rows = evalrun.run(data, _eval_options(args), fitted)
    except (datasets.FetchError, datasets.DatasetNotFetched, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
    else:
        limit = f"from at most {2 * args.limit} texts a set" if args.limit else "every text"
        which = (
            "both halves of the held-out test splits, each half's fitted rows fitted on the other"
            if args.cross_fit
            else "the evaluation half of the held-out test splits"
        )
        print(f"{which} ({limit}); label 1 = should be flagged")
        print(format_table(rows))
    return 0


def cmd_voter(args: argparse.Namespace) -> int:
    from quorum import datasets
    from services.voter import evalrun, fitting

    data = config.load(args.config)
    try:
        result = evalrun.run_fit(data, _eval_options(args))
    except (datasets.FetchError, datasets.DatasetNotFetched, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    Path(args.out).write_text(fitting.to_toml(result), encoding="utf-8")
    print(f"fitted on the fitting half of the test splits of {', '.join(args.sets)}")
    for c in result.categories:
        weights = ", ".join(f"{j} {w:.2f}" for j, w in c.weights.items())
        print(
            f"  {c.category:<11} threshold {c.threshold:.3f}  weights: {weights}  "
            f"(n={c.n}, {c.positives} positive, training error {c.train_error:.2%})"
        )
    print(f"  vote_threshold {result.vote_threshold}; whole policy training error "
          f"{result.train_error:.2%}")  # fmt: skip
    print("error correlation between judges (phi; 1 = they err on the same texts):")
    for (a, b), phi in sorted(result.correlation.items()):
        print(f"  {a} ~ {b}: {phi:+.2f}")
    print(f"written to {args.out}: quorum eval --fitted {args.out}, or merge it with --config")
    return 0


def cmd_triton(args: argparse.Namespace) -> int:
    from quorum import tritoncheck
    from quorum.tritonserver import default_model_repository

    repo = Path(args.repo) if args.repo else default_model_repository()
    findings = tritoncheck.check_repository(repo, models=args.model or None)
    if args.json:
        print(tritoncheck.findings_json(findings))
    else:
        print(tritoncheck.format_findings(findings, repo))
    return 1 if tritoncheck.errors(findings) else 0


# -- parser ---------------------------------------------------------------------------------

EVAL_SETS = ("toxic", "hate", "spam", "chatspam", "injection", "violence", "selfharm", "adult")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quorum", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="TOML file merged over the embedded defaults")
    sub = p.add_subparsers(dest="command", required=True)

    for name, helptext in (("up", "start the mesh until Ctrl-C"), ("demo", "start, show, stop")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--data-dir", help="state and logs (default: $QUORUM_DATA_DIR or .quorum)")
        s.add_argument(
            "--simulator", choices=("auto", "on", "off"), default="auto",
            help="auto: simulate models whose API key is not set",
        )  # fmt: skip

    def client(name: str, helptext: str, service: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=helptext)
        s.add_argument(f"--{service}", help=f"{service} address (default: as quorum up)")
        s.add_argument("--json", action="store_true", help="the whole response as JSON")
        s.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
        return s

    m = client("moderate", "moderate a text, or every line of a file", "voter")
    m.add_argument("text", nargs="?")
    m.add_argument("--model", action="append", help="only this judge (repeatable)")
    m.add_argument("--file", help="moderate each non-blank line of this file (- for stdin)")
    m.add_argument("--batch", type=int, default=256, help="texts a call with --file (256)")
    c = client("complete", "complete a prompt", "router")
    c.add_argument("prompt")
    c.add_argument("--model", help="registry model name")
    c.add_argument("--model-id", type=int, help="the brief's model id (0 = gpt-4.1, ...)")
    c.add_argument("--task", help="e.g. chat, code, summarize")
    c.add_argument("--stream", action="store_true")
    c.add_argument("--max-tokens", type=int, default=0)
    c.add_argument("--moderation", choices=("none", "input", "output", "both"))
    u = client("usage", "usage and cost so far", "cost")
    u.add_argument("--model", help="only this model")

    cost = sub.add_parser("cost", help="cost reports, prices and estimates")
    csub = cost.add_subparsers(dest="cost_command", required=True)
    cr = csub.add_parser("report", help="usage and cost grouped by model, tenant, day or month")
    cr.add_argument("--cost", help="cost service address (default: as quorum up)")
    cr.add_argument("--json", action="store_true", help="the whole response as JSON")
    cr.add_argument("--csv", action="store_true", help="the rows as CSV")
    cr.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    cr.add_argument("--by", choices=tuple(_GROUPINGS), default="model")
    cr.add_argument("--since", help="YYYY-MM-DD or an ISO 8601 time (default: the beginning)")
    cr.add_argument("--until", help="YYYY-MM-DD or an ISO 8601 time, exclusive (default: now)")
    cr.add_argument("--tenant", help="only this tenant")
    cr.add_argument("--model", help="only this model")
    cr.add_argument("--time-zone", default="UTC", help="of days, months and dates (default UTC)")
    cr.add_argument(
        "--compare", action="store_true",
        help="instead: the monthly cost of --tokens on each model, a mix and a voting panel",
    )  # fmt: skip
    cr.add_argument("--tokens", type=int, default=10_000_000, help="per month (--compare)")
    cr.add_argument(
        "--output-share", type=float, default=0.5, help="of the tokens, output (--compare)"
    )
    cr.add_argument("--mix", type=_mix, help="MODEL=WEIGHT,... (--compare; default: equal)")
    cr.add_argument("--currency", help="ISO 4217 code (--compare; default USD)")

    est = csub.add_parser(
        "estimate", help="what a call would cost at today's price (records nothing)"
    )
    est.add_argument("--cost", help="cost address (default: as quorum up)")
    est.add_argument("--json", action="store_true", help="the whole response as JSON")
    est.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    est.add_argument("--model", required=True, help="registry model name")
    est.add_argument("--input-tokens", type=_tokens, required=True)
    est.add_argument("--output-tokens", type=_tokens, required=True)
    est.add_argument(
        "--cached-input-tokens", type=_tokens, default=0,
        help="of the input tokens, how many the provider's prompt cache serves",
    )  # fmt: skip
    est.add_argument(
        "--currency", help="also in this ISO 4217 currency, at the official exchange rate"
    )

    keys = sub.add_parser("keys", help="API keys in this machine's keys file")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="a new key (printed once)")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--role", choices=[r.value for r in Role], default="client")
    kc.add_argument("--name", help="a note: who or what uses it")
    kl = ksub.add_parser("list", help="every key (never a secret)")
    kr = ksub.add_parser("revoke", help="revoke a key (services stop taking it within a second)")
    kr.add_argument("id")
    for k in (kc, kl, kr):
        k.add_argument("--json", action="store_true", help="as JSON")

    budget = sub.add_parser("budget", help="monthly budgets per tenant")
    bsub = budget.add_subparsers(dest="budget_command", required=True)

    def budget_client(name: str, helptext: str) -> argparse.ArgumentParser:
        s = bsub.add_parser(name, help=helptext)
        s.add_argument("--cost", help="cost service address (default: as quorum up)")
        s.add_argument("--json", action="store_true", help="the whole response as JSON")
        s.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
        return s

    bs = budget_client("set", "create or replace a budget")
    bs.add_argument("--tenant", required=True)
    bs.add_argument("--model", help="only this model's calls (default: every model)")
    bs.add_argument("--limit", required=True, help="per calendar month, e.g. 100 or 12.50")
    bs.add_argument("--currency", default="USD", help="ISO 4217 code (default: USD)")
    bs.add_argument("--time-zone", default="UTC", help="IANA zone of the months (default: UTC)")
    bs.add_argument(
        "--alert", type=float, action="append",
        help="alert at this fraction of the limit (repeatable; default: 0.8 and 1.0)",
    )  # fmt: skip
    bs.add_argument("--alert-only", action="store_true", help="alert, never refuse calls")
    bst = budget_client("status", "where budgets stand this month")
    bst.add_argument("--tenant", help="only this tenant's (default: every tenant's)")
    bd = budget_client("delete", "delete a budget")
    bd.add_argument("--tenant", required=True)
    bd.add_argument("--model", help="the model's budget (default: the tenant-wide one)")
    bw = budget_client("watch", "follow a tenant's budgets until --timeout")
    bw.add_argument("--tenant", required=True)
    bw.set_defaults(timeout=3600.0)

    e = sub.add_parser("eval", help="every judge and the ensembles on the held-out sets")
    e.add_argument(
        "--sets", nargs="+", default=list(EVAL_SETS),
        help="labelled sets (quorum.datasets); packaged ones are fetched when missing",
    )  # fmt: skip
    e.add_argument("--limit", type=int, default=1000, help="texts per set (0: all)")
    e.add_argument("--triton", help="a running Triton's gRPC address (default: start one)")
    e.add_argument("--simulated", action="store_true", help="add a simulated remote LLM judge")
    e.add_argument("--concurrency", type=int, default=16)
    e.add_argument("--json", action="store_true", help="the rows as JSON")
    how = e.add_mutually_exclusive_group()
    how.add_argument("--fitted", help="a policy file from `quorum voter fit` (adds its row)")
    how.add_argument(
        "--cross-fit", action="store_true",
        help="both halves of each test split: fit on each half, score the other (adds the rows)",
    )  # fmt: skip

    voter = sub.add_parser("voter", help="voter tools")
    v = voter.add_subparsers(dest="voter_command", required=True)
    f = v.add_parser("fit", help="fit judge weights and thresholds on held-out texts")
    f.add_argument("--sets", nargs="+", default=list(EVAL_SETS))
    f.add_argument("--limit", type=int, default=1000, help="texts per set (0: all)")
    f.add_argument("--triton", help="a running Triton's gRPC address (default: start one)")
    f.add_argument("--simulated", action="store_true", help="add a simulated remote LLM judge")
    f.add_argument("--concurrency", type=int, default=16)
    f.add_argument("--out", default="voter-fitted.toml", help="where the policy is written")

    triton = sub.add_parser("triton", help="Triton model repository tools")
    t = triton.add_subparsers(dest="triton_command", required=True)
    tc = t.add_parser(
        "check", help="check a model repository (layout, configs, ensembles, backends)"
    )
    tc.add_argument("repo", nargs="?", help="default: $QUORUM_TRITON_REPOSITORY or triton/")
    tc.add_argument(
        "--model", action="append",
        help="only this model and the models its ensemble calls (repeatable)",
    )  # fmt: skip
    tc.add_argument("--json", action="store_true", help="the findings as JSON")
    return p


CLIENT_COMMANDS = ("moderate", "complete", "usage", "cost", "budget")
COMMANDS = {
    "up": cmd_up,
    "demo": cmd_demo,
    "moderate": cmd_moderate,
    "complete": cmd_complete,
    "usage": cmd_usage,
    "cost": cmd_cost,
    "budget": cmd_budget,
    "keys": cmd_keys,
    "eval": cmd_eval,
    "voter": cmd_voter,
    "triton": cmd_triton,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if os.environ.get("QUORUM_LOG_LEVEL"):
        import logging

        logging.basicConfig(level=os.environ["QUORUM_LOG_LEVEL"].upper())
    try:
        if args.command in CLIENT_COMMANDS and telemetry.export_enabled(os.environ):
            code = _traced(args)
        else:
            code = COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        code = 2
    except BrokenPipeError:
        # the reader went away (`quorum ... | head`): stop quietly, as other tools do; point
        # stdout at nothing so the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    raise SystemExit(code)


def _traced(args: argparse.Namespace) -> int:
    """Run a client command as the root span of its trace and say which trace it was."""
    from opentelemetry import trace

    shutdown = telemetry.setup_client("quorum-cli")
    try:
        sub = getattr(args, f"{args.command}_command", None)
        name = " ".join(filter(None, ("quorum", args.command, sub)))
        service = {"moderate": "voter", "complete": "router"}.get(args.command, "cost")
        attributes: dict[str, str | int] = {
            "quorum.cli.command": name,
            "server.address": _addr(args, service),
            "quorum.cli.exit_code": -1,
        }
        if getattr(args, "model", None):
            attributes["gen_ai.request.model"] = args.model
        with trace.get_tracer(__name__).start_as_current_span(name, attributes=attributes) as span:
            code = COMMANDS[args.command](args)
            span.set_attribute("quorum.cli.exit_code", code)
            if code:
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"exit status {code}"))
            print(f"trace id: {span.get_span_context().trace_id:032x}", file=sys.stderr)
        return code
    finally:
        shutdown()


if __name__ == "__main__":
    main()
