"""Every RPC of the three services, fed random request messages (property-based, built from
the protos' own descriptors: odd strings, huge and negative numbers, unknown enum values,
nested messages, repeated fields) and random bytes: each call ends with a status the API
documents, never UNKNOWN or INTERNAL, and every error carries an ErrorInfo. The services run
as real processes (router and voter on the simulator; the voter's Triton is down, so its
judges fail and it says so)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorum.cost.v1 import cost_pb2
from quorum.ids import free_ports
from quorum.router.v1 import router_pb2
from quorum.simulator import ProviderSimulator
from quorum.voter.v1 import voter_pb2

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}

TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "gpt-4.1", "sim-chat", "default", "acme", "rsv_x", "UTC", "USD"]),
    st.text(alphabet="\x00\u202e\ufffd\U0001f642a", max_size=20),
    st.builds(lambda n: "x" * n, st.integers(1000, 20_000)),
)
INTS = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, -1, 10**7, 10**7 + 1]))
INT64 = st.one_of(INTS, st.integers(-(2**63), 2**63 - 1))
SCALARS: dict[int, st.SearchStrategy[Any]] = {
    d.FieldDescriptor.TYPE_STRING: TEXT,
    d.FieldDescriptor.TYPE_BYTES: st.binary(max_size=40),
    d.FieldDescriptor.TYPE_BOOL: st.booleans(),
    d.FieldDescriptor.TYPE_INT32: INTS,
    d.FieldDescriptor.TYPE_INT64: INT64,
    d.FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    d.FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    d.FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    d.FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
}


def messages(desc: d.Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Values for a random subset of ``desc``'s fields, as keyword arguments."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if f.type == d.FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2:
                continue
            inner = messages(f.message_type, depth + 1)
            cls = _class(f.message_type)
            value: st.SearchStrategy[Any] = inner.map(lambda kw, cls=cls: cls(**kw))
        elif f.type == d.FieldDescriptor.TYPE_ENUM:
            value = st.integers(-1, len(f.enum_type.values) + 1)
        else:
            value = SCALARS.get(f.type, st.nothing())
        if f.label == d.FieldDescriptor.LABEL_REPEATED:
            value = st.lists(value, max_size=3)
        fields[f.name] = value
    return st.fixed_dictionaries({}, optional=fields)


def _class(desc: d.Descriptor) -> Callable[..., Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def check(err: grpc.RpcError, method: str) -> None:
    assert isinstance(err, grpc.Call)
    code = err.code()
    assert code in DOCUMENTED, f"{method}: {code} {err.details()}"
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and (
        status is None
    ):
        return  # the transport's own (a stream cut by our deadline), not a service answer
    assert status is not None, f"{method}: no google.rpc.Status ({code})"
    info = error_details_pb2.ErrorInfo()
    assert any(x.Unpack(info) for x in status.details), f"{method}: no ErrorInfo"


def call(channel: grpc.Channel, service: Any, method: d.MethodDescriptor, req: Message) -> None:
    path = f"/{service.full_name}/{method.name}"
    out = _class(method.output_type)
    try:
        if method.server_streaming:
            stream = channel.unary_stream(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=out.FromString,
            )(req, timeout=1.5)
            for _, _ in zip(range(2), stream, strict=False):
                pass
            stream.cancel()  # type: ignore[attr-defined]
        else:
            channel.unary_unary(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=out.FromString,
            )(req, timeout=5)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
            check(e, path)


def raw(channel: grpc.Channel, service: Any, method: d.MethodDescriptor, data: bytes) -> None:
    path = f"/{service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path)(data, timeout=1.5)
            for _, _ in zip(range(2), stream, strict=False):
                pass
            stream.cancel()  # type: ignore[attr-defined]
        else:
            channel.unary_unary(path)(data, timeout=5)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
            check(e, path)


SERVICES = {
    "cost": cost_pb2.DESCRIPTOR.services_by_name["CostService"],
    "router": router_pb2.DESCRIPTOR.services_by_name["RouterService"],
    "voter": voter_pb2.DESCRIPTOR.services_by_name["VoterService"],
}
CALLS = [(name, m.name) for name, svc in SERVICES.items() for m in svc.methods]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    """cost, voter and router as processes on free ports (the voter's Triton is down)."""
    from tests.conftest import start_service

    tmp: Path = tmp_path_factory.mktemp("fuzz")
    cost_port, voter_port, router_port, triton_port = free_ports(4)
    env = {"QUORUM_DATA_DIR": str(tmp)}
    procs: list[Any] = []
    channels: dict[str, grpc.Channel] = {}
    with ProviderSimulator() as sim:
        try:  # whatever started is stopped, even when a later service fails to start
            procs.append(
                start_service(
                    "services.cost",
                    "--address",
                    f"127.0.0.1:{cost_port}",
                    log_path=tmp / "cost.log",
                    env=env,
                )
            )
            procs.append(
                start_service(
                    "services.voter",
                    "--address",
                    f"127.0.0.1:{voter_port}",
                    f"--set=voter.cost_address=127.0.0.1:{cost_port}",
                    f"--set=voter.triton_address=127.0.0.1:{triton_port}",
                    log_path=tmp / "voter.log",
                    env=env,
                )
            )
            procs.append(start_service(
                "services.router", "--address", f"127.0.0.1:{router_port}",
                f"--set=router.cost_address=127.0.0.1:{cost_port}",
                f"--set=router.voter_address=127.0.0.1:{voter_port}",
                f"--set=router.simulator_url={sim.url}",
                log_path=tmp / "router.log", env=env,
            ))  # fmt: skip
            for name, port in (("cost", cost_port), ("voter", voter_port), ("router", router_port)):
                channels[name] = grpc.insecure_channel(f"127.0.0.1:{port}")
            yield channels, procs
        finally:
            for ch in channels.values():
                ch.close()
            for p in procs:
                p.kill()


@pytest.mark.parametrize(("service", "method"), CALLS)
def test_random_requests_get_documented_statuses(mesh, service: str, method: str) -> None:
    channels, procs = mesh
    svc = SERVICES[service]
    m = svc.methods_by_name[method]
    cls = _class(m.input_type)

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(messages(m.input_type), st.binary(max_size=64))
    def run(fields: dict[str, Any], junk: bytes) -> None:
        try:
            req = cls(**fields)
        except (ValueError, TypeError):  # a value the message type itself refuses
            return
        call(channels[service], svc, m, req)
        raw(channels[service], svc, m, junk)

    run()
    for p in procs:
        assert p.proc.poll() is None, f"{p} died:\n{p.logs()}"
