"""python -m services.router [--config FILE] [--address HOST:PORT] [--set SECTION.KEY=VALUE]"""

from __future__ import annotations

from quorum.runner import run
from services.router.config import RouterSettings
from services.router.server import create

if __name__ == "__main__":
    run("router", RouterSettings.from_config, create)
