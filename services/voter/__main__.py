"""python -m services.voter [--config FILE] [--address HOST:PORT] [--set SECTION.KEY=VALUE]"""

from __future__ import annotations

from quorum.runner import run
from services.voter.config import VoterSettings
from services.voter.server import create

if __name__ == "__main__":
    run("voter", VoterSettings.from_config, create)
