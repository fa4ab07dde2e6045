"""python -m services.cost [--config FILE] [--address HOST:PORT] [--set SECTION.KEY=VALUE]

e.g. ``--set cost.database=/var/lib/quorum/ledger.sqlite3`` (relative paths are taken from
``$QUORUM_DATA_DIR``), or ``--set cost.database=postgresql://quorum@db:5432/quorum`` for a
ledger that several replicas share (the password from ``PGPASSWORD``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quorum.runner import run
from services.cost.config import CostSettings, from_config
from services.cost.server import create


def settings_from(data: Mapping[str, Any]) -> CostSettings:
    return from_config(data)


if __name__ == "__main__":
    run("cost", settings_from, create)
