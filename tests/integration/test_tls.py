"""TLS on the mesh: real cost and router servers (in process) with certificates from a
throw-away authority, the real simulator. Clients must verify the servers; with mutual TLS
the servers verify the clients too, and the router presents its certificate to the cost
service."""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest

from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.router.v1 import router_pb2, router_pb2_grpc
from services.cost import server as cost_server
from services.cost.config import from_config as cost_settings
from services.router import server as router_server
from services.router.config import RouterSettings
from tests.integration.inproc import free_port, mesh_config, start, stop
from tests.tlscerts import TestCA


def tls_config(ca: TestCA, *, client_auth: bool) -> dict:
    pem = ca.issue("service")
    return {
        "enabled": True,
        "cert_file": str(pem.cert),
        "key_file": str(pem.key),
        "ca_file": str(ca.ca_file),
        "client_auth": client_auth,
    }


@pytest.fixture(params=[False, True], ids=["tls", "mutual-tls"])
async def secured(sim, tmp_path, request):
    """(router address, cost address, the CA, the [tls] table, mutual?)"""
    ca = TestCA(tmp_path / "pki")
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    data["tls"] = tls_config(ca, client_auth=request.param)
    cost = await start(cost_server.create, cost_settings(data, env))
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    try:
        yield f"127.0.0.1:{router[1]}", f"127.0.0.1:{cost_port}", ca, data["tls"], request.param
    finally:
        await stop(router)
        await stop(cost)


def credentials(ca: TestCA, *, with_cert: bool) -> grpc.ChannelCredentials:
    root = ca.ca_file.read_bytes()
    if not with_cert:
        return grpc.ssl_channel_credentials(root)
    pem = ca.issue("client")
    return grpc.ssl_channel_credentials(root, pem.key.read_bytes(), pem.cert.read_bytes())


async def test_a_verified_client_completes_and_the_router_bills_over_tls(secured, sim):
    router_addr, cost_addr, ca, _, mutual = secured
    creds = credentials(ca, with_cert=mutual)
    async with grpc.aio.secure_channel(router_addr, creds) as ch:
        resp = await router_pb2_grpc.RouterServiceStub(ch).Complete(
            router_pb2.CompleteRequest(prompt="hello", max_tokens=20), timeout=10
        )
    assert resp.text and resp.usage_recorded  # router -> cost over (mutual) TLS
    async with grpc.aio.secure_channel(cost_addr, creds) as ch:
        summary = await cost_pb2_grpc.CostServiceStub(ch).GetUsageSummary(
            cost_pb2.GetUsageSummaryRequest(), timeout=5
        )
    assert summary.requests == 1


async def test_plaintext_and_unverified_clients_cannot_connect(secured, sim, tmp_path):
    router_addr, _, ca, _, mutual = secured
    stranger = TestCA(tmp_path / "other", name="some other CA")
    attempts = [
        grpc.aio.insecure_channel(router_addr),
        grpc.aio.secure_channel(router_addr, credentials(stranger, with_cert=True)),
    ]
    if mutual:  # the right CA, but no client certificate
        attempts.append(grpc.aio.secure_channel(router_addr, credentials(ca, with_cert=False)))
    for ch in attempts:
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await router_pb2_grpc.RouterServiceStub(ch).Complete(
                    router_pb2.CompleteRequest(prompt="hello"), timeout=5
                )
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sim.stats["completions"] == 0


async def test_the_cli_speaks_tls_from_the_same_configuration(secured, tmp_path):
    router_addr, _, _, table, _ = secured
    env = {f"QUORUM_TLS__{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
           for k, v in table.items()}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quorum.cli", "complete", "hello", "--router", router_addr,
        "--moderation", "none",
        env={"PATH": "/usr/bin:/bin", "QUORUM_DATA_DIR": str(tmp_path), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert b"answer:" in out
