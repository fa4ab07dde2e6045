"""``[router] workers``: its validation, what each worker gets of its own (usage journal,
scrape endpoint), the ports the workers' endpoints would take, the first's check that
nothing else listens on a fixed port, and what the mesh makes of it."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest

from quorum import config
from quorum.ids import free_port_run
from quorum.mesh import Mesh, MeshOptions
from quorum.metrics import MetricsSettings
from quorum.registry import ConfigError
from quorum.workers import check_port_free, worker_command
from services.router.config import RouterSettings, worker_journal, worker_metrics, workers


def settings(**router: object) -> RouterSettings:
    data = config.load(env={})
    data["router"] |= router
    return RouterSettings.from_config(data, {"QUORUM_DATA_DIR": "/data"})


def test_one_worker_by_default() -> None:
    s = settings()
    assert (s.workers, s.worker) == (1, 0)


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_workers_from_1_to_64_are_taken(n: int) -> None:
    assert settings(workers=n, metrics_address="127.0.0.1:0").workers == n


@pytest.mark.parametrize("value", [0, -1, 65, 1000, "2", 2.0, True, None])
def test_anything_else_is_refused_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^router\.workers: an integer from 1 to 64"):
        settings(workers=value)


def test_the_environment_sets_it_like_any_key() -> None:
    data = config.load(env={"QUORUM_ROUTER__WORKERS": "4"})
    assert workers(data) == 4
    with pytest.raises(ConfigError, match=r"router\.workers"):
        workers(config.load(env={"QUORUM_ROUTER__WORKERS": "four"}))


def test_several_workers_need_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.router.config.sys.platform", "darwin")
    assert workers({"router": {"workers": 1}}) == 1
    with pytest.raises(ConfigError, match=r"router\.workers = 2: .*Linux"):
        workers({"router": {"workers": 2}})


def test_each_worker_has_its_own_journal_and_scrape_endpoint() -> None:
    s = settings(workers=3, metrics_address="127.0.0.1:9400")
    assert s.for_worker(0) is s  # the first keeps the configured ones
    w2 = s.for_worker(2)
    assert w2.worker == 2
    assert s.journal_path == Path("/data/router-usage.journal")
    assert w2.journal_path == Path("/data/router-usage-2.journal")
    assert w2.metrics.address == "127.0.0.1:9402"
    assert (w2.address, w2.workers, w2.limits) == (s.address, s.workers, s.limits)


@pytest.mark.parametrize(
    ("address", "index", "expected"),
    [
        ("127.0.0.1:9400", 1, "127.0.0.1:9401"),
        ("[::1]:9400", 3, "[::1]:9403"),
        ("127.0.0.1:0", 5, "127.0.0.1:0"),  # a free port each
        ("", 2, ""),  # none
    ],
)
def test_a_workers_endpoint_is_the_port_plus_its_index(
    address: str, index: int, expected: str
) -> None:
    assert worker_metrics(MetricsSettings(address), index).address == expected


def test_a_workers_journal_sits_beside_the_firsts() -> None:
    assert worker_journal(Path("/d/router-usage.journal"), 7) == Path("/d/router-usage-7.journal")


def test_the_workers_endpoints_may_not_take_another_parts_port() -> None:
    # with the embedded defaults the second worker would take the voter's 50082
    with pytest.raises(
        ConfigError, match=r"router\.metrics_address: .*50082 is voter\.metrics_address"
    ):
        settings(workers=2)
    with pytest.raises(ConfigError, match=r"50051 is router\.address"):
        settings(workers=3, metrics_address="127.0.0.1:50049")
    assert settings(workers=4, metrics_address="127.0.0.1:50091").workers == 4
    assert settings(workers=64, metrics_address="127.0.0.1:0").workers == 64
    assert settings(workers=8, metrics_address="").workers == 8


def test_the_workers_endpoints_must_be_ports() -> None:
    with pytest.raises(ConfigError, match=r"router\.metrics_address: 4 workers .* 65535"):
        settings(workers=4, metrics_address="127.0.0.1:65533")


def test_a_workers_command_is_the_firsts_bound_to_its_port() -> None:
    cmd = worker_command("services.router", ["--config", "q.toml", "--address", "x:0"], "h:7", 3)
    assert cmd[1:7] == ["-m", "services.router", "--config", "q.toml", "--address", "x:0"]
    assert cmd[7:9] == ["--address=h:7", "--worker=3"]  # the last --address wins
    assert cmd[9].startswith("--parent=")


def test_a_port_anything_listens_on_is_not_free() -> None:
    check_port_free("127.0.0.1:0")  # nothing to check
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    check_port_free(f"127.0.0.1:{free}")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a stranger's might
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.listen()
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}"):
            check_port_free(f"127.0.0.1:{port}")


def test_the_mesh_reads_the_routers_workers_from_config_and_settings(tmp_path: Path) -> None:
    plain = Mesh(MeshOptions(data_dir=tmp_path, env={}))
    assert plain.router_workers == 1
    opts = MeshOptions(data_dir=tmp_path, env={}, settings=("router.workers=3",))
    assert Mesh(opts).router_workers == 3
    by_env = Mesh(MeshOptions(data_dir=tmp_path, env={"QUORUM_ROUTER__WORKERS": "2"}))
    assert by_env.router_workers == 2


def test_on_ephemeral_ports_the_mesh_gives_the_workers_endpoints_free_ports(
    tmp_path: Path,
) -> None:
    opts = MeshOptions(
        data_dir=tmp_path, env={}, settings=("router.workers=4",), ephemeral_ports=True
    )
    mesh = Mesh(opts)
    (arg,) = mesh._metrics_args("router")
    port = int(arg.rpartition(":")[2])
    assert mesh.metrics["router"] == f"http://127.0.0.1:{port}/metrics"
    for p in range(port, port + 4):  # the first's and the three workers'
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_run_of_free_ports_is_free() -> None:
    first = free_port_run(5)
    with contextlib.ExitStack() as stack:
        for p in range(first, first + 5):
            stack.enter_context(socket.socket()).bind(("127.0.0.1", p))
