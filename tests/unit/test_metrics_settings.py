"""The scrape endpoint's settings: on loopback by default, off when empty, and an address
beyond this machine refused unless it is meant; when OTLP metric export is on."""

from __future__ import annotations

import pytest

from quorum import config
from quorum.metrics import MetricsSettings, export_enabled
from quorum.registry import ConfigError
from services.cost.config import from_config as cost_settings
from services.router.config import RouterSettings


def with_(service: str, address: object, **metrics: object) -> dict:
    data = config.load(env={})
    data[service]["metrics_address"] = address
    data["metrics"] |= metrics
    return data


def test_every_service_has_a_loopback_endpoint_by_default() -> None:
    data = config.load(env={})
    assert MetricsSettings.from_config(data, "router").address == "127.0.0.1:50081"
    assert MetricsSettings.from_config(data, "voter").address == "127.0.0.1:50082"
    assert MetricsSettings.from_config(data, "cost").address == "127.0.0.1:50083"
    assert RouterSettings.from_config(data, {}).metrics.address == "127.0.0.1:50081"
    assert cost_settings(data, {}).metrics.address == "127.0.0.1:50083"


@pytest.mark.parametrize("address", ["127.0.0.1:0", "localhost:9464", "[::1]:9464"])
def test_loopback_addresses_are_taken(address: str) -> None:
    got = MetricsSettings.from_config(with_("router", address), "router").address
    assert got == address


def test_an_empty_address_is_no_endpoint() -> None:
    assert MetricsSettings.from_config(with_("voter", ""), "voter").address == ""


def test_an_address_beyond_this_machine_is_refused_unless_meant() -> None:
    with pytest.raises(ConfigError, match=r"router\.metrics_address.*allow_remote"):
        MetricsSettings.from_config(with_("router", "0.0.0.0:9464"), "router")
    with pytest.raises(ConfigError, match=r"cost\.metrics_address"):
        cost_settings(with_("cost", "10.1.2.3:9464"), {})
    meant = with_("router", "0.0.0.0:9464", allow_remote=True)
    assert MetricsSettings.from_config(meant, "router").address == "0.0.0.0:9464"


@pytest.mark.parametrize("address", ["9464", "127.0.0.1:", "127.0.0.1:99999", ":9464", 9464])
def test_a_malformed_address_names_the_key(address: object) -> None:
    with pytest.raises(ConfigError, match=r"voter\.metrics_address"):
        MetricsSettings.from_config(with_("voter", address), "voter")


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:4318/v1/metrics"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_METRICS_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}, False),
        # spans off, metrics still on: each signal has its own switch
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, True),
    ],
)
def test_otlp_export_follows_the_standard_variables(env: dict[str, str], on: bool) -> None:
    assert export_enabled(env) is on
