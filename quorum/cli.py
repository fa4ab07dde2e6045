"""The ``quorum`` command.

    quorum up                 start Triton, cost, voter, router (and the simulator when no
                              provider key is set); Ctrl-C or SIGTERM stops everything
    quorum demo               start the mesh on free ports, run the examples, stop it
    quorum moderate TEXT      ask the voter (every model's vote is shown)
    quorum complete PROMPT    ask the router [--model M] [--task T] [--stream]
    quorum usage              usage and cost so far, per model

``moderate``, ``complete`` and ``usage`` talk to a running mesh at the addresses ``quorum up``
uses by default (override with --router/--voter/--cost); ``--json`` prints the whole response
in protobuf's JSON mapping.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from quorum import config, demo, telemetry
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.errors import QuorumError
from quorum.formatting import format_completion, format_moderation, format_usage
from quorum.grpcerrors import from_rpc_error
from quorum.mesh import Mesh, MeshOptions
from quorum.registry import ConfigError
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.signals import StopSignals
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc

# -- printing ---------------------------------------------------------------------------------


def _print_json(msg: Message) -> None:
    print(json_format.MessageToJson(msg, preserving_proto_field_name=False, indent=2))


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


def _addr(args: argparse.Namespace, name: str) -> str:
    given = getattr(args, name, None)
    if given:
        return str(given)
    return str(config.load(args.config)[name]["address"])


def cmd_moderate(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(_addr(args, "voter")) as ch:
        try:
            resp = voter_pb2_grpc.VoterServiceStub(ch).Moderate(
                voter_pb2.ModerateRequest(text=args.text, models=args.model or []),
                timeout=args.timeout,
            )
        except grpc.RpcError as e:
            return _fail(e, "voter")
    return _show(args, resp, format_moderation)


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
    return req


def cmd_complete(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(_addr(args, "router")) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        try:
            if args.stream:
                summary = None
                for event in stub.CompleteStream(
                    router_pb2.CompleteStreamRequest(request=_request(args)), timeout=args.timeout
                ):
                    if event.HasField("summary"):
                        summary = event.summary
                    elif args.json:
                        _print_json(event)
                    else:
                        print(event.delta, end="", flush=True)
                if summary is not None:
                    if args.json:
                        _print_json(router_pb2.CompleteStreamResponse(summary=summary))
                    else:
                        print("\n" + format_completion(summary, with_text=False))
                return 0
            resp = stub.Complete(_request(args), timeout=args.timeout)
        except grpc.RpcError as e:
            return _fail(e, "router")
    return _show(args, resp, format_completion)


def cmd_usage(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(_addr(args, "cost")) as ch:
        try:
            resp = cost_pb2_grpc.CostServiceStub(ch).GetUsageSummary(
                cost_pb2.GetUsageSummaryRequest(model=args.model or ""), timeout=args.timeout
            )
        except grpc.RpcError as e:
            return _fail(e, "cost")
    return _show(args, resp, format_usage)


# -- mesh commands --------------------------------------------------------------------------------


def _print_mesh(mesh: Mesh, took_s: float) -> None:
    print(f"Quorum is up ({took_s:.1f} s):")
    for name in ("router", "voter", "cost", "triton", "simulator"):
        if name in mesh.addresses:
            print(f"  {name:<10} {mesh.addresses[name]}")
    print(f"  logs       {mesh.log_dir.resolve()}")
    if mesh.simulated_models:
        print(
            "No API key is set for: " + ", ".join(mesh.simulated_models) + ".\n"
            "  Completions with these models come from the provider SIMULATOR (simulated text).\n"
            "  Moderation uses the real local models only (judges without a key do not vote)."
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
        while not stop.wait(1.0):
            if mesh.triton is None or mesh.triton.returncode is not None:
                print("error: tritonserver exited; stopping", file=sys.stderr)
                return 1
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


# -- parser -------------------------------------------------------------------------------------


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

    m = client("moderate", "moderate a text", "voter")
    m.add_argument("text")
    m.add_argument("--model", action="append", help="only this judge (repeatable)")
    c = client("complete", "complete a prompt", "router")
    c.add_argument("prompt")
    c.add_argument("--model", help="registry model name")
    c.add_argument("--task", help="e.g. chat, code, summarize")
    c.add_argument("--stream", action="store_true")
    c.add_argument("--max-tokens", type=int, default=0)
    c.add_argument("--moderation", choices=("none", "input", "output", "both"))
    u = client("usage", "usage and cost so far", "cost")
    u.add_argument("--model", help="only this model")
    return p


CLIENT_COMMANDS = ("moderate", "complete", "usage")
COMMANDS = {
    "up": cmd_up,
    "demo": cmd_demo,
    "moderate": cmd_moderate,
    "complete": cmd_complete,
    "usage": cmd_usage,
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
    raise SystemExit(code)


def _traced(args: argparse.Namespace) -> int:
    """Run a client command as the root span of its trace and say which trace it was."""
    from opentelemetry import trace

    shutdown = telemetry.setup_client("quorum-cli")
    try:
        with trace.get_tracer(__name__).start_as_current_span(f"quorum {args.command}") as span:
            code = COMMANDS[args.command](args)
            print(f"trace id: {span.get_span_context().trace_id:032x}", file=sys.stderr)
        return code
    finally:
        shutdown()


if __name__ == "__main__":
    main()
