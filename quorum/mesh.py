"""Start and stop the whole mesh: the provider simulator (when needed), Triton, and the cost,
voter and router services, each its own process. Used by ``quorum up``, ``quorum demo`` and
the end-to-end tests.

When span export is on (``OTEL_EXPORTER_OTLP_ENDPOINT``), Triton exports to an
:class:`~quorum.otlprelay.OtlpRelay` that runs in this process and forwards its spans to the
traces endpoint as protobuf (Triton itself sends JSON, which some receivers refuse).

Services start in dependency order (simulator → Triton → cost → voter → router); each is
ready when it has printed its address and its health service says SERVING. :meth:`Mesh.stop`
stops them in reverse order with SIGTERM (a graceful drain), then SIGKILL after a grace time.
Logs go to ``<data_dir>/logs/<name>.log``. :attr:`Mesh.metrics` holds each part's Prometheus
scrape URL (:mod:`quorum.metrics`; Triton's own on its metrics port).
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quorum import config, telemetry
from quorum.errors import Unavailable
from quorum.ids import free_port_run, free_ports
from quorum.otlprelay import OtlpRelay
from quorum.registry import ConfigError, OpenAIBackend, TritonBackend, load_registry
from quorum.runner import set_override
from quorum.signals import parent_death_signal
from quorum.tls import TlsSettings, blocking_channel
from quorum.tritonserver import (
    TritonOptions,
    TritonServer,
    default_model_repository,
    optional_skipped,
)
from services.router.config import workers as router_workers
from services.router.routing import triton_models

log = logging.getLogger(__name__)

_LISTENING = re.compile(r"listening on (\S+)")


@dataclass(frozen=True)
class MeshOptions:
    data_dir: Path
    config_path: Path | None = None
    #: pick free ports instead of the configured ones (demo, tests)
    ephemeral_ports: bool = False
    #: "auto": start the simulator when a generative model has no API key; "on"; "off"
    simulator: str = "auto"
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    #: extra "SECTION.KEY=VALUE" settings passed to every service
    settings: tuple[str, ...] = ()
    simulator_args: tuple[str, ...] = ()
    start_timeout_s: float = 180.0


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[str]
    address: str
    pump: threading.Thread
    cmd: Sequence[str] = ()
    health: bool = True
    #: for :meth:`Mesh.hung_parts`: the channel its health checks use, and when it last answered
    channel: grpc.Channel | None = None
    answered: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        self.pump.join(timeout=2.0)  # EOF after exit
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.channel is not None:
            self.channel.close()


class Mesh:
    def __init__(self, options: MeshOptions) -> None:
        self.options = options
        self.addresses: dict[str, str] = {}
        #: where each part's metrics are scraped (http://HOST:PORT/metrics), by part
        self.metrics: dict[str, str] = {}
        #: generative models whose answers are simulated (no API key)
        self.simulated_models: tuple[str, ...] = ()
        #: real generative models on Triton that are loaded (e.g. smollm2-135m)
        self.local_models: tuple[str, ...] = ()
        #: local generative models left out, and the modules they lack (their extra)
        self.local_missing: dict[str, tuple[str, ...]] = {}
        #: the local model that answers requests naming no model or task (no key is set)
        self.no_key_model: str = ""
        self.triton: TritonServer | None = None
        #: relays Triton's spans (JSON) to the traces endpoint as protobuf; None: no export
        self.relay: OtlpRelay | None = None
        self._children: list[_Child] = []
        self._config = config.load(options.config_path, options.env)
        #: the router's processes (``[router] workers``, :mod:`quorum.workers`): it prints its
        #: address once they all listen, so it is started and read as any service
        self.router_workers = self._router_workers()

    def _router_workers(self) -> int:
        data = copy.deepcopy(self._config)
        try:
            for item in self.options.settings:
                set_override(data, item)
            return router_workers(data)
        except ConfigError:
            return 1  # the router says what is wrong when it starts

    @property
    def log_dir(self) -> Path:
        return self.options.data_dir / "logs"

    def _port(self, section: str, key: str = "address") -> str:
        if self.options.ephemeral_ports:
            return "127.0.0.1:0"
        return str(self._config[section][key])

    def _metrics_args(self, section: str) -> list[str]:
        """The service's scrape endpoint, noted in :attr:`metrics`: a free loopback port when
        ports are ephemeral (picked here, so the URL is known without asking the service;
        for a router with workers, the first of as many free ports in a row: worker i serves
        on the port + i), else the configured one ("" none)."""
        if self.options.ephemeral_ports:
            count = self.router_workers if section == "router" else 1
            address = f"127.0.0.1:{free_port_run(count) if count > 1 else free_ports(1)[0]}"
            args = [f"--set={section}.metrics_address={address}"]
        else:
            address = str(self._config.get(section, {}).get("metrics_address", ""))
            args = []
        if address and not address.endswith(":0"):
            self.metrics[section] = f"http://{address}/metrics"
        return args

    def _env(self) -> dict[str, str]:
        env = dict(self.options.env)
        env["QUORUM_DATA_DIR"] = str(self.options.data_dir.resolve())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _simulated_models(self) -> list[str]:
        """The provider model ids of every OpenAI-compatible model: what the simulator serves
        (a request for another is 404, as from a real provider)."""
        registry = load_registry(self._config)
        return sorted(
            {
                m.backend.provider_model
                for m in registry.models.values()
                if isinstance(m.backend, OpenAIBackend)
            }
        )

    def _needs_simulator(self) -> tuple[str, ...]:
        """Generative models that lack their API key in the environment."""
        registry = load_registry(self._config).resolve_keys(self.options.env)
        return tuple(
            sorted(
                m.name
                for m in registry.models.values()
                if m.unavailable_reason and isinstance(m.backend, OpenAIBackend)
            )
        )

    # -- start ---------------------------------------------------------------------------

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.options.start_timeout_s
        try:
            self._start_all(deadline)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, deadline: float) -> None:
        opts = self.options
        base = [f"--set={s}" for s in opts.settings]
        if opts.config_path:
            base.append(f"--config={opts.config_path}")
        missing = self._needs_simulator()
        sim_url = ""
        if opts.simulator == "on" or (opts.simulator == "auto" and missing):
            port = "0" if opts.ephemeral_ports else str(self._config["simulator"]["port"])
            served = [f"--model={m}" for m in self._simulated_models()]
            child = self._spawn(
                "simulator",
                [
                    sys.executable,
                    "-m",
                    "quorum.simulator",
                    "--port",
                    port,
                    *served,
                    *opts.simulator_args,
                ],
                deadline,
                health=False,
            )
            sim_url = child.address
            self.simulated_models = missing

        upstream = telemetry.traces_url(opts.env)
        if upstream:
            self.relay = OtlpRelay(upstream, headers=telemetry.traces_headers(opts.env)).start()

        t = self._config["triton"]
        eph = opts.ephemeral_ports
        repository = default_model_repository()
        self.triton = TritonServer(
            TritonOptions(
                model_repository=repository,
                # and the router's prompt classifier when [routing] classifier is on
                skip=optional_skipped(t, repository, needed=triton_models(self._config)),
                # routed_chat answers keyless models from the simulator, as the router does
                env=_triton_env(opts, sim_url),
                http_port=0 if eph else int(t["http_port"]),
                grpc_port=0 if eph else int(t["grpc_port"]),
                metrics_port=0 if eph else int(t["metrics_port"]),
                otlp_traces_url=self.relay.url if self.relay else None,
                otlp_schedule_delay_ms=_int_or_none(opts.env.get("OTEL_BSP_SCHEDULE_DELAY")),
                log_file=self.log_dir / "triton.log",
            )
        )
        self.triton.start(timeout_s=max(deadline - time.monotonic(), 1.0))
        self.addresses["triton"] = self.triton.grpc_address
        self.metrics["triton"] = f"http://{self.triton.metrics_address}/metrics"

        cost = self._spawn(
            "cost",
            [
                sys.executable, "-m", "services.cost", f"--address={self._port('cost')}",
                *self._metrics_args("cost"), *base,
            ],
            deadline,
        )  # fmt: skip
        voter = self._spawn(
            "voter",
            [
                sys.executable, "-m", "services.voter", f"--address={self._port('voter')}",
                f"--set=voter.triton_address={self.triton.grpc_address}",
                f"--set=voter.cost_address={cost.address}",
                *self._metrics_args("voter"), *base,
            ],
            deadline,
        )  # fmt: skip
        router_args = [
            sys.executable, "-m", "services.router", f"--address={self._port('router')}",
            f"--set=router.voter_address={voter.address}",
            f"--set=router.cost_address={cost.address}",
            f"--set=router.triton_address={self.triton.grpc_address}",
            *self._metrics_args("router"),
        ]  # fmt: skip
        if sim_url:
            router_args.append(f"--set=router.simulator_url={sim_url}")
        self._note_local_models(sim_url)
        self._spawn("router", [*router_args, *base], deadline)

    def _note_local_models(self, sim_url: str) -> None:
        """Which local chat models the router can use (as it will find them at start-up) and
        whether one answers requests that name nothing (:meth:`Registry.no_key_model`)."""
        assert self.triton is not None
        registry = load_registry(self._config).resolve_keys(
            self.options.env, simulator_url=sim_url or None
        )
        chat = {
            m.name: m.backend.triton_model
            for m in registry.models.values()
            if isinstance(m.backend, TritonBackend) and m.backend.outputs == "chat"
        }
        loaded = set(self.triton.models)
        self.local_models = tuple(sorted(n for n, t in chat.items() if t in loaded))
        self.local_missing = {
            n: self.triton.left_out[t] for n, t in sorted(chat.items()) if t in self.triton.left_out
        }
        registry = registry.without({n: "not loaded" for n in chat if n not in self.local_models})
        routing = self._config.get("routing", {})
        self.no_key_model = registry.no_key_model(str(routing.get("no_key_model") or ""))

    def _spawn(
        self, name: str, cmd: Sequence[str], deadline: float, *, health: bool = True
    ) -> _Child:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as err:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=self._env(),
                text=True,
                start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
                preexec_fn=parent_death_signal(),  # noqa: PLW1509
            )
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        out = proc.stdout

        def pump() -> None:  # keeps draining stdout so the child never blocks on it
            for line in out:
                lines.put(line)
            lines.put(None)

        thread = threading.Thread(target=pump, name=f"{name}-stdout", daemon=True)
        thread.start()
        try:
            address = self._read_address(name, proc, lines, log_path, deadline)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            thread.join(timeout=2.0)
            out.close()
            raise
        child = _Child(name, proc, address, thread, tuple(cmd), health)
        self._children.append(child)
        self.addresses[name] = address
        if health:
            self._wait_serving(child, log_path, deadline)
        log.info("%s ready on %s", name, address)
        return child

    def _read_address(
        self,
        name: str,
        proc: subprocess.Popen[str],
        lines: queue.Queue[str | None],
        log_path: Path,
        deadline: float,
    ) -> str:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise Unavailable(f"{name} did not start in time; see {log_path}")
            try:
                line = lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = proc.wait()
                raise Unavailable(
                    f"{name} exited with code {code} while starting:\n{_tail(log_path)}",
                    reason="SERVICE_START_FAILED",
                )
            m = _LISTENING.search(line)
            if m:
                return m.group(1)

    def _wait_serving(self, child: _Child, log_path: Path, deadline: float) -> None:
        tls = TlsSettings.from_config(self._config, self._env())
        with blocking_channel(child.address, tls) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if child.proc.poll() is not None:
                    code = child.proc.returncode
                    raise Unavailable(
                        f"{child.name} exited with code {code}:\n{_tail(log_path)}",
                        reason="SERVICE_START_FAILED",
                    )
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise Unavailable(f"{child.name} is not SERVING; see {log_path}")
                time.sleep(0.1)

    # -- stop ------------------------------------------------------------------------------

    def stop(self, grace_s: float | None = None) -> None:
        """Stop everything started, in reverse order, each given ``grace_s`` to drain after
        SIGTERM (by default a little more than the longest call the router or the voter
        allows, so no call in flight is cut), then SIGKILL. Idempotent."""
        if grace_s is None:
            grace_s = self._drain_s()
        while self._children:
            child = self._children.pop()
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    log.warning("%s ignored SIGTERM; killing it", child.name)
                    child.proc.kill()
                    child.proc.wait()
            child.close()
        if self.triton is not None:
            self.triton.stop()
            self.triton = None
        if self.relay is not None:  # after Triton: its last spans go out as it stops
            self.relay.stop()
            self.relay = None

    def restart(self, name: str, timeout_s: float = 60.0) -> None:
        """Start the part called ``name`` again (one that stopped on its own), on the same
        address and with the same arguments. Raises Unavailable when it does not come up."""
        if name == "tritonserver" and self.triton is not None:
            self.triton.stop()
            self.triton.start(timeout_s=timeout_s)
            return
        (old,) = [c for c in self._children if c.name == name]
        at = self._children.index(old)
        if old.proc.poll() is None:
            old.proc.kill()
        old.proc.wait()
        old.close()
        self._children.remove(old)
        new = self._spawn(name, old.cmd, time.monotonic() + timeout_s, health=old.health)
        self._children.remove(new)
        self._children.insert(at, new)  # stopped in the same order as before

    def hung_parts(self, after_s: float) -> list[str]:
        """The parts whose health service has not answered for ``after_s`` seconds while their
        process runs (hung, or too stuck to answer a health check), each killed, so that it
        is then among :meth:`exited_parts`. Any answer counts, NOT_SERVING too (a part waiting
        for a dependency is alive); only a timeout or no connection does not."""
        hung = []
        now = time.monotonic()
        tls = TlsSettings.from_config(self._config, self._env())
        for child in self._children:
            if not child.health or child.proc.poll() is not None:
                continue
            if child.channel is None:
                child.channel = blocking_channel(child.address, tls)
            try:
                health_pb2_grpc.HealthStub(child.channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=min(1.0, after_s / 3)
                )
                child.answered = now
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                    child.answered = now  # refused (e.g. too many calls), but it answered
            if now - child.answered > after_s:
                log.warning("%s has not answered a health check for %.0f s; killing it",
                            child.name, now - child.answered)  # fmt: skip
                child.proc.kill()
                child.proc.wait()
                hung.append(child.name)
        return hung

    def exited_parts(self) -> list[tuple[str, int]]:
        """The parts that have stopped on their own: (name, exit code)."""
        gone = [(c.name, c.proc.returncode) for c in self._children if c.proc.poll() is not None]
        if self.triton is not None and self.triton.returncode is not None:
            gone.append(("tritonserver", self.triton.returncode))
        return gone

    def _drain_s(self) -> float:
        longest = [
            float(self._config.get(name, {}).get("max_timeout_s", 0.0))
            for name in ("router", "voter")
        ]
        return max([30.0, *longest]) + 5.0

    def __enter__(self) -> Mesh:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _triton_env(opts: MeshOptions, sim_url: str) -> dict[str, str]:
    """What Triton's Python models read besides the environment: the configuration file, and
    the simulator for models without their key (routed_chat answers them as the router does)."""
    env = {}
    if opts.config_path:
        env["QUORUM_CONFIG"] = str(Path(opts.config_path).resolve())
    if sim_url:
        env["QUORUM_ROUTER__SIMULATOR_URL"] = sim_url
    return env
