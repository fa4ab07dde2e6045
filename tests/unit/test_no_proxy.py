"""``NO_PROXY`` as the provider client reads it (:func:`quorum.backends.transport.bypassed`)."""

from __future__ import annotations

import pytest

from quorum.backends.transport import bypassed


@pytest.mark.parametrize(
    ("host", "no_proxy", "expected"),
    [
        ("localhost:8000", "localhost,127.0.0.1", True),
        ("127.0.0.1:50070", "localhost,127.0.0.1", True),
        ("api.openai.com", "openai.com", True),  # a domain names its hosts
        ("api.openai.com", ".openai.com", True),
        ("API.OpenAI.com.", "x.org, openai.com", True),  # case, spaces, a trailing dot
        ("notopenai.com", "openai.com", False),  # not a suffix at a dot
        ("openai.com", "api.openai.com", False),
        ("[::1]:80", "::1", True),
        ("anything.example", "*", True),
        ("anything.example", "", False),
        ("anything.example", ",,", False),
    ],
)
def test_no_proxy_names_a_host_or_a_domain_it_is_in(
    host: str, no_proxy: str, expected: bool
) -> None:
    assert bypassed(host, no_proxy) is expected
