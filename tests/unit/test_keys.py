"""API keys, the pure part: the keys file, verification, roles and tenant scopes."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from quorum import auth
from quorum.auth import AuthSettings, Identity, KeyStore, Role, bearer, is_loopback
from quorum.authgrpc import identify
from quorum.errors import NotFound, PermissionDenied, Unauthenticated
from quorum.registry import ConfigError


def test_a_key_verifies_as_its_tenant_and_role_and_its_secret_is_not_stored(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key, token = store.create("acme", Role.CLIENT, "ci job")
    assert token.startswith(f"qk_{key.id}_") and len(token) == 3 + 12 + 1 + 43
    assert store.verify(token) == Identity("acme", Role.CLIENT, key.id)
    text = (tmp_path / "keys.json").read_text()
    assert token.split("_", 2)[2] not in text  # only a digest is kept
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600


@pytest.mark.parametrize("token", ["", "qk_", "nonsense", "qk_000000000000_" + "A" * 43])
def test_unknown_or_malformed_keys_are_unauthenticated(tmp_path: Path, token: str) -> None:
    store = KeyStore(tmp_path / "keys.json")
    _, real = store.create("acme", Role.ADMIN)
    with pytest.raises(Unauthenticated) as e:
        store.verify(token)
    assert e.value.reason == "INVALID_KEY"
    with pytest.raises(Unauthenticated):
        store.verify(real[:-1] + ("B" if real[-1] != "B" else "C"))  # one character off


def test_a_revoked_key_stops_working_once_the_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    server_side = KeyStore(path)
    key, token = KeyStore(path).create("acme", Role.CLIENT)
    assert server_side.verify(token).tenant == "acme"
    revoked = KeyStore(path).revoke(key.id)
    assert not revoked.active and revoked.revoked_at is not None
    time.sleep(auth.RELOAD_EVERY_S + 0.05)
    with pytest.raises(Unauthenticated):
        server_side.verify(token)
    with pytest.raises(NotFound):
        KeyStore(path).revoke("000000000000")
    assert [k.active for k in KeyStore(path).all()] == [False]


def test_the_tenants_are_those_a_key_belongs_to_revoked_or_not(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    server_side = KeyStore(path)
    assert not server_side.has_tenant("acme")  # no keys file yet: no tenants
    key, _ = KeyStore(path).create("acme", Role.CLIENT)
    assert server_side.has_tenant("acme")  # made just now: the file is read again at once
    assert not server_side.has_tenant("globex") and not server_side.has_tenant("")
    KeyStore(path).revoke(key.id)
    time.sleep(auth.RELOAD_EVERY_S + 0.05)
    assert server_side.has_tenant("acme")  # its history stays readable


def test_a_corrupt_keys_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text("{not json")
    with pytest.raises(ConfigError, match="keys file"):
        KeyStore(tmp_path / "keys.json").all()


def test_bearer_metadata() -> None:
    assert bearer((("authorization", "Bearer abc"),)) == "abc"
    assert bearer((("authorization", "bearer  abc "),)) == "abc"
    assert bearer((("other", "x"),)) is None
    for bad in ("Basic abc", "Bearer", "abc"):
        with pytest.raises(Unauthenticated):
            bearer((("authorization", bad),))


def test_identify_with_and_without_keys(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    _, client = store.create("acme", Role.CLIENT)
    _, service = store.create("quorum", Role.SERVICE)
    auth_md = (("authorization", f"Bearer {client}"),)
    assert identify(store, auth_md).tenant == "acme"
    with pytest.raises(PermissionDenied):  # a client acts only for itself
        identify(store, (*auth_md, ("quorum-tenant", "globex")))
    assert identify(store, (*auth_md, ("quorum-tenant", "acme"))).tenant == "acme"
    acting = identify(store, (("authorization", f"Bearer {service}"), ("quorum-tenant", "globex")))
    assert (acting.tenant, acting.role) == ("globex", Role.SERVICE)
    with pytest.raises(Unauthenticated) as e:
        identify(store, ())
    assert e.value.reason == "NO_CREDENTIALS"
    # keys off: everyone is trusted, the tenant comes from the metadata
    assert identify(None, ()) == Identity("default", Role.ADMIN)
    assert identify(None, (("quorum-tenant", "acme"),)) == Identity("acme", Role.ADMIN)


def test_a_client_reads_only_its_own_tenant() -> None:
    token = auth.set_current(Identity("acme", Role.CLIENT, "k"))
    try:
        assert auth.tenant_scope(None) == "acme" and auth.tenant_scope("acme") == "acme"
        with pytest.raises(PermissionDenied):
            auth.tenant_scope("globex")
        with pytest.raises(PermissionDenied) as e:
            auth.require(Role.SERVICE, Role.ADMIN)
        assert e.value.reason == "ROLE_NOT_ALLOWED"
    finally:
        auth.reset_current(token)
    token = auth.set_current(Identity("ops", Role.ADMIN, "k"))
    try:
        assert auth.tenant_scope(None) is None and auth.tenant_scope("globex") == "globex"
    finally:
        auth.reset_current(token)


@pytest.mark.parametrize(
    ("address", "ok"),
    [("127.0.0.1:50051", True), ("localhost:1", True), ("[::1]:1", True),
     ("0.0.0.0:50051", False), ("[::]:1", False), (":50051", False), ("10.0.0.5:1", False)],
)  # fmt: skip
def test_without_keys_only_loopback_addresses_are_served(address: str, ok: bool) -> None:
    if ok:
        AuthSettings().check_bind(address, "x")
    else:
        with pytest.raises(ConfigError, match=r"\[auth\] enabled"):
            AuthSettings().check_bind(address, "x")
    AuthSettings(enabled=True).check_bind(address, "x")  # with keys, any address


def test_a_service_that_calls_others_needs_its_own_key_when_keys_are_on() -> None:
    data = {"auth": {"enabled": True, "keys_file": "k.json", "service_key_env": "SVC_KEY"}}
    with pytest.raises(ConfigError, match="SVC_KEY"):
        AuthSettings.from_config(data, {"QUORUM_DATA_DIR": "/tmp/x"}, calls_services=True)
    s = AuthSettings.from_config(
        data, {"SVC_KEY": "qk_x", "QUORUM_DATA_DIR": "/tmp/x"}, calls_services=True
    )
    assert s.service_token == "qk_x" and "qk_x" not in repr(s)
    assert s.keys_file == Path("/tmp/x/k.json")
    assert is_loopback("127.0.0.2") and not is_loopback("example.com")


def test_a_keys_file_broken_while_serving_keeps_the_keys_read_before(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    store = KeyStore(path)
    _, token = store.create("acme", Role.CLIENT)
    assert store.verify(token).tenant == "acme"
    path.write_text("{broken")
    time.sleep(auth.RELOAD_EVERY_S + 0.05)
    assert store.verify(token).tenant == "acme"


def test_the_keys_cli_creates_lists_and_revokes(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "QUORUM_DATA_DIR": str(tmp_path)}

    def keys(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "quorum.cli", "keys", *argv],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip

    made = json.loads(keys("create", "--tenant", "acme", "--role", "service", "--json").stdout)
    assert made["tenant"] == "acme" and made["role"] == "service" and made["active"] is True
    assert KeyStore(tmp_path / "keys.json").verify(made["key"]).role is Role.SERVICE
    listed = json.loads(keys("list", "--json").stdout)
    assert [k["id"] for k in listed] == [made["id"]] and "key" not in listed[0]
    assert made["key"] not in keys("list").stdout
    assert keys("revoke", made["id"]).stdout.strip() == f"revoked {made['id']}"
    assert json.loads(keys("list", "--json").stdout)[0]["active"] is False
    gone = keys("revoke", "000000000000")
    assert gone.returncode == 1 and "KEY_NOT_FOUND" in gone.stderr
    bad = keys("create", "--tenant", "a b")
    assert bad.returncode == 1 and "tenant" in bad.stderr
