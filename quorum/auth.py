"""API keys, tenants and roles: who is calling, and what they may do.

Callers send ``authorization: Bearer <key>`` metadata (the gRPC convention). A key is
``qk_<id>_<secret>``: ``id`` (12 hex digits) finds it, ``secret`` (32 random bytes, URL-safe
base64) proves it. Only a SHA-256 of the secret is stored (the secret has 256 bits of
entropy, so a slow password hash would add nothing), and it is compared in constant time.
Each key belongs to one tenant and has one role:

- ``client``: completions and moderation, and its own tenant's usage and budget status;
- ``service``: what Quorum's services call on each other (record usage, reserve and commit
  budgets for any tenant), besides everything a client may do;
- ``admin``: everything, for every tenant (set budgets, read everyone's usage).

Keys live in one JSON file (``[auth] keys_file``, default ``keys.json`` in the data
directory), written whole and renamed into place by ``quorum keys create|list|revoke``
under an exclusive lock; every service re-reads it when it changes (checked at most once a
second), so a revoked key stops working within about a second.

Without ``[auth] enabled``, no key is asked for and every caller is trusted as an admin of the
tenant named by the ``quorum-tenant`` metadata (``default`` without it). Services refuse to
start that way on anything but a loopback address.

With keys, the tenants are those some key belongs to, active or revoked
(:meth:`KeyStore.has_tenant`): a request that names any other tenant names nobody. Without
keys any well-formed tenant name is one.
"""

from __future__ import annotations

import base64
import contextvars
import enum
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quorum import ids
from quorum.errors import NotFound, PermissionDenied, Unauthenticated
from quorum.registry import ConfigError

log = logging.getLogger(__name__)

#: the request metadata that names the tenant when keys are off
TENANT_METADATA = "quorum-tenant"
AUTHORIZATION = "authorization"
_KEY = re.compile(r"qk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
RELOAD_EVERY_S = 1.0


class Role(enum.StrEnum):
    CLIENT = "client"
    SERVICE = "service"
    ADMIN = "admin"


@dataclass(frozen=True)
class Identity:
    """Who a call comes from."""

    tenant: str
    role: Role
    #: the key's id ("" when keys are off)
    key_id: str = ""

    def may_act_for(self, tenant: str) -> bool:
        return self.role is not Role.CLIENT or tenant == self.tenant

    def acting_for(self, tenant: str) -> Identity:
        """This caller acting for ``tenant`` (a checked name; "" means its own): a service
        or admin may act for any tenant, a client only for its own (PermissionDenied,
        OTHER_TENANT)."""
        if not tenant or tenant == self.tenant:
            return self
        if not self.may_act_for(tenant):
            raise PermissionDenied(
                "a client key acts only for its own tenant",
                reason="OTHER_TENANT",
                metadata={"tenant": self.tenant},
            )
        return Identity(tenant, self.role, self.key_id)


@dataclass(frozen=True)
class Key:
    """A stored key (never its secret)."""

    id: str
    tenant: str
    role: str
    name: str
    secret_sha256: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def new_key(tenant: str, role: Role, name: str = "") -> tuple[Key, str]:
    """A new key and its token (shown once, never stored)."""
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    key = Key(key_id, tenant, role.value, name, _digest(secret), time.time())
    return key, f"qk_{key_id}_{secret}"


def bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if any."""
    for k, v in metadata or ():
        if k == AUTHORIZATION:
            value = v.decode("latin-1") if isinstance(v, bytes) else v
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "the authorization metadata must be 'Bearer <key>'", reason="BAD_CREDENTIALS"
                )
            return token.strip()
    return None


class KeyStore:
    """The keys file: read (and re-read when it changes) by services, edited by the CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, Key] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0

    # -- reading (services) --------------------------------------------------------------------

    def all(self) -> list[Key]:
        self._refresh(force=True)
        return sorted(self._keys.values(), key=lambda k: (k.tenant, k.created_at))

    def verify(self, token: str) -> Identity:
        """The identity a token proves; Unauthenticated for a malformed, unknown or revoked
        key (one message for all three: the caller learns nothing about which)."""
        self._refresh()
        m = _KEY.fullmatch(token)
        key = self._keys.get(m.group(1)) if m else None
        expected = key.secret_sha256 if key else _digest("x" * 43)
        ok = hmac.compare_digest(expected, _digest(m.group(2) if m else "y" * 43))
        if key is None or not ok or not key.active:
            raise Unauthenticated("the API key is not valid", reason="INVALID_KEY")
        return Identity(key.tenant, Role(key.role), key.id)

    def has_tenant(self, tenant: str) -> bool:
        """Whether a key belongs to ``tenant``: an active one, or a revoked one (its tenant's
        budgets and usage stay readable). Not found, the file is looked at again at once, so a
        key just made counts."""
        self._refresh()
        if not self._any_of(tenant):
            self._refresh(now=True)
        return self._any_of(tenant)

    def _any_of(self, tenant: str) -> bool:
        return any(k.tenant == tenant for k in self._keys.values())

    def _refresh(self, *, force: bool = False, now: bool = False) -> None:
        """Read the file again when it changed: at most once a second unless ``now`` or
        ``force``; a broken file raises ConfigError only with ``force`` (else the keys read
        before are kept)."""
        at = time.monotonic()
        if not (force or now) and at - self._checked < RELOAD_EVERY_S:
            return
        self._checked = at
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._stamp:
            try:
                self._keys = {k.id: k for k in _read(self.path)}
            except ConfigError as e:
                if force:
                    raise
                # serving: keep the keys read before (a file edited by hand may be broken
                # for a moment); the next change is read again
                log.error("%s; keeping the %d keys read before", e, len(self._keys))
            self._stamp = stamp

    # -- editing (the CLI) -----------------------------------------------------------------------

    def create(self, tenant: str, role: Role, name: str = "") -> tuple[Key, str]:
        ids.tenant(tenant, field="tenant", required=True)
        key, token = new_key(tenant, role, name)
        with self._locked() as keys:
            keys.append(key)
        return key, token

    def revoke(self, key_id: str) -> Key:
        with self._locked() as keys:
            for i, k in enumerate(keys):
                if k.id == key_id:
                    if k.active:
                        keys[i] = Key(**{**asdict(k), "revoked_at": time.time()})
                    return keys[i]
        raise NotFound(f"no key {key_id!r}", reason="KEY_NOT_FOUND", metadata={"id": key_id})

    @contextmanager
    def _locked(self) -> Iterator[list[Key]]:
        """The keys, to change in place; written back (whole, renamed into place) on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = _read(self.path) if self.path.exists() else []
            yield keys
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"keys": [asdict(k) for k in keys]}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)


def _read(path: Path) -> list[Key]:
    try:
        doc = json.loads(path.read_text())
        return [Key(**k) for k in doc["keys"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read the keys file {path}: {e}") from None


# -- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthSettings:
    """``[auth]``: whether keys are required, where they are kept, and (for a service that
    calls others) this service's own key, read from the environment variable
    ``service_key_env``."""

    enabled: bool = False
    keys_file: Path = Path("keys.json")
    service_key_env: str = "QUORUM_SERVICE_KEY"
    #: this service's key for its calls to other services; None when keys are off
    service_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_config(
        cls, data: Mapping[str, Any], env: Mapping[str, str], *, calls_services: bool = False
    ) -> AuthSettings:
        """Settings from ``[auth]``; with keys on, a service that ``calls_services`` must find
        its own key in the environment (ConfigError saying how to make one otherwise)."""
        from quorum import config

        a = config.section(data, "auth")
        path = Path(config.get_str(a, "keys_file", "auth")).expanduser()
        enabled = config.get_bool(a, "enabled", "auth")
        key_env = config.get_str(a, "service_key_env", "auth")
        token = None
        if enabled and calls_services:
            token = env.get(key_env, "")
            if not token:
                raise ConfigError(
                    f"[auth] is enabled: this service needs its own key (role service) in "
                    f"${key_env} to call the other services "
                    "(`quorum keys create --tenant quorum --role service`)"
                )
        return cls(
            enabled=enabled,
            keys_file=path if path.is_absolute() else config.data_dir(env) / path,
            service_key_env=key_env,
            service_token=token,
        )

    def check_bind(self, address: str, where: str) -> None:
        """Refuse to serve on a non-loopback address without keys."""
        if self.enabled:
            return
        host = address.rpartition(":")[0].strip("[]")
        if not is_loopback(host):
            raise ConfigError(
                f"{where} = {address!r} listens beyond this machine, and [auth] enabled is "
                "false: anyone who can reach it could spend on your provider keys. Set "
                "[auth] enabled = true (and create keys with `quorum keys create`), or bind "
                "127.0.0.1"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the caller of the current request ---------------------------------------------------------

_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "quorum_identity", default=None
)


def current() -> Identity:
    """The identity of the request being served (set by the server's auth interceptor)."""
    who = _current.get()
    if who is None:  # a servicer called outside a server (tests of the servicer alone)
        return Identity(ids.DEFAULT_TENANT, Role.ADMIN)
    return who


def set_current(identity: Identity) -> contextvars.Token[Identity | None]:
    return _current.set(identity)


def reset_current(token: contextvars.Token[Identity | None]) -> None:
    _current.reset(token)


def require(*roles: Role) -> Identity:
    who = current()
    if who.role not in roles:
        raise PermissionDenied(
            f"a {who.role.value} key may not do this (needs {' or '.join(r.value for r in roles)})",
            reason="ROLE_NOT_ALLOWED",
            metadata={"role": who.role.value},
        )
    return who


def tenant_scope(requested: str | None) -> str | None:
    """The tenant a read may cover: a client's own (asking for another is PermissionDenied;
    asking for none means its own); anyone else's as asked (None: every tenant)."""
    who = current()
    if who.role is not Role.CLIENT:
        return requested
    if requested not in (None, "", who.tenant):
        raise PermissionDenied(
            "a client key reads only its own tenant's data",
            reason="OTHER_TENANT",
            metadata={"tenant": who.tenant},
        )
    return who.tenant
