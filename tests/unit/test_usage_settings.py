"""[usage] settings: the defaults, and the batch size bounded by what the cost service takes."""

from __future__ import annotations

import re

import pytest

from quorum import config
from quorum.registry import ConfigError
from quorum.usage import MAX_BATCH_RECORDS, MeterSettings


def test_the_defaults_send_records_in_batches() -> None:
    s = MeterSettings.from_config(config.defaults())
    assert s == MeterSettings()
    assert 1 < s.send_batch_records <= MAX_BATCH_RECORDS


@pytest.mark.parametrize("n", [1, MAX_BATCH_RECORDS])
def test_a_batch_size_within_bounds_is_taken(n: int) -> None:
    data = config.defaults()
    data["usage"]["send_batch_records"] = n
    assert MeterSettings.from_config(data).send_batch_records == n


@pytest.mark.parametrize("n", [0, MAX_BATCH_RECORDS + 1, "500"])
def test_a_batch_size_out_of_bounds_is_a_config_error(n: object) -> None:
    data = config.defaults()
    data["usage"]["send_batch_records"] = n
    with pytest.raises(ConfigError, match=re.escape("usage.send_batch_records: ")):
        MeterSettings.from_config(data)
