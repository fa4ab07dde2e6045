"""Configuration: the embedded defaults, an optional file over them, the environment over both.

Precedence (last wins): ``quorum/defaults.toml`` → the file named by ``--config`` or
``QUORUM_CONFIG`` → ``QUORUM_<SECTION>__<KEY>`` variables (values parsed as TOML scalars when
they parse, else taken as strings; e.g. ``QUORUM_VOTER__MIN_VOTES=2``). Tables merge key by
key; everything else is replaced. Each service turns the merged mapping into its own frozen
settings object and fails at start-up when something is wrong.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from quorum.registry import ConfigError

ENV_PREFIX = "QUORUM_"


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _scalar(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``QUORUM_ROUTER__ADDRESS=...`` → {"router": {"address": ...}}."""
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _scalar(raw)
    return out


def defaults() -> dict[str, Any]:
    text = resources.files("quorum").joinpath("defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The merged configuration. ``path`` defaults to ``$QUORUM_CONFIG`` when set."""
    env = os.environ if env is None else env
    data = defaults()
    path = path or env.get("QUORUM_CONFIG") or None
    if path:
        p = Path(path)
        try:
            with p.open("rb") as f:
                data = _merge(data, tomllib.load(f))
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    return _merge(data, env_overrides(env))


def section(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    return dict(value)


def get_str(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: a non-empty string is required")
    return value


def get_float(table: Mapping[str, Any], key: str, where: str, *, minimum: float = 0.0) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"{where}.{key}: a number >= {minimum:g} is required")
    return float(value)


def get_bool(table: Mapping[str, Any], key: str, where: str) -> bool:
    value = table.get(key)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: true or false is required")
    return value


def get_choice(table: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...]) -> str:
    value = table.get(key)
    if value not in choices:
        raise ConfigError(f"{where}.{key}: one of {', '.join(choices)}")
    return str(value)


def get_int(table: Mapping[str, Any], key: str, where: str, *, minimum: int = 0) -> int:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key}: an integer >= {minimum} is required")
    return value


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the embedded defaults keep state (the SQLite ledger): ``$QUORUM_DATA_DIR`` or
    ``./.quorum``."""
    env = os.environ if env is None else env
    return Path(env.get("QUORUM_DATA_DIR") or ".quorum")
