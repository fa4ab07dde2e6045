"""``[cost] database``: a SQLite path or a PostgreSQL URL, whose password never shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from psycopg import conninfo

from quorum import config
from quorum.registry import ConfigError
from services.cost.config import CostSettings, from_config
from services.cost.pgledger import PostgresUrl, mask_url

SECRET = "s3cret-Pa55"


def settings(database: str, env: dict[str, str] | None = None) -> CostSettings:
    return from_config(config.defaults(), {"QUORUM_DATA_DIR": "/data", **(env or {})},
                       database=database)  # fmt: skip


def test_the_default_is_a_sqlite_file_in_the_data_directory() -> None:
    s = from_config(config.defaults(), {"QUORUM_DATA_DIR": "/data"})
    assert s.database == Path("/data/ledger.sqlite3")


@pytest.mark.parametrize("path", ["/var/lib/quorum/l.sqlite3", "postgresql.sqlite3", "pg/l.db"])
def test_anything_but_a_postgres_url_is_a_sqlite_path(path: str) -> None:
    db = settings(path).database
    assert isinstance(db, Path)
    assert db.is_absolute()
    assert db.name == Path(path).name


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_a_postgres_url_selects_postgres(scheme: str) -> None:
    db = settings(f"{scheme}://quorum:{SECRET}@db.internal:5433/ledger?sslmode=require").database
    assert isinstance(db, PostgresUrl)
    params = conninfo.conninfo_to_dict(db.conninfo())
    assert params["password"] == SECRET
    assert (params["host"], params["port"], params["dbname"]) == ("db.internal", "5433", "ledger")
    assert str(db) == f"{scheme.lower()}://quorum:***@db.internal:5433/ledger?sslmode=require"


def test_the_password_never_shows_in_str_repr_or_the_settings_repr() -> None:
    s = settings(f"postgresql://quorum:{SECRET}@db/ledger")
    for text in (str(s.database), repr(s.database), repr(s), f"{s}"):
        assert SECRET not in text
        assert "***" in text


def test_a_password_parameter_and_a_percent_encoded_one_are_masked() -> None:
    assert mask_url(f"postgresql://db/ledger?user=q&password={SECRET}") == (
        "postgresql://db/ledger?user=q&password=%2A%2A%2A"
    )
    url = PostgresUrl("postgresql://quorum:p%40ss%2Fw@db/ledger")
    assert conninfo.conninfo_to_dict(url.conninfo())["password"] == "p@ss/w"
    assert "p%40ss" not in str(url)
    assert url.redact("FATAL: p@ss/w and p%40ss%2Fw") == "FATAL: *** and ***"


def test_pgpassword_is_used_when_the_url_has_none() -> None:
    db = settings("postgresql://quorum@db/ledger", {"PGPASSWORD": SECRET}).database
    assert isinstance(db, PostgresUrl)
    assert conninfo.conninfo_to_dict(db.conninfo())["password"] == SECRET
    assert SECRET not in str(db)
    assert db.redact(f"could not use {SECRET}") == "could not use ***"
    # a password in the URL wins over the environment
    db = settings(f"postgresql://quorum:{SECRET}@db/ledger", {"PGPASSWORD": "other"}).database
    assert isinstance(db, PostgresUrl)
    assert conninfo.conninfo_to_dict(db.conninfo())["password"] == SECRET


def test_a_malformed_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        settings(f"postgresql://quorum:{SECRET}@db/ledger?no_such_option=1")
    assert "[cost].database" in str(info.value)
    assert SECRET not in str(info.value)
    assert "postgresql://quorum:***@db/ledger" in str(info.value)


def test_the_group_commit_bounds_come_from_the_config() -> None:
    s = from_config(config.defaults(), {"QUORUM_DATA_DIR": "/data"})
    assert (s.max_batch_records, s.max_queued_records) == (256, 8192)
    data = config.defaults()
    data["cost"] |= {"max_batch_records": 32, "max_queued_records": 100}
    s = from_config(data, {"QUORUM_DATA_DIR": "/data"})
    assert (s.max_batch_records, s.max_queued_records) == (32, 100)


@pytest.mark.parametrize("key", ["max_batch_records", "max_queued_records"])
def test_a_group_commit_bound_under_one_is_a_config_error(key: str) -> None:
    data = config.defaults()
    data["cost"][key] = 0
    with pytest.raises(ConfigError, match=re.escape(f"[cost].{key}: an integer >= 1")):
        from_config(data, {"QUORUM_DATA_DIR": "/data"})
