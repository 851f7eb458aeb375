"""The service markers (tests/support/markers.py): derived from what a test uses, and
enforced when a test gets a service its markers do not declare."""

from __future__ import annotations

import pytest

from tests.support.markers import RULES
from tests.support.services import PROJECT_ROOT

MARKERS_INI = "[pytest]\nmarkers =\n" + "".join(f"    {name}: x\n" for name in RULES)


@pytest.fixture(autouse=True)
def _no_plugin_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner runs need no installed plugin (asyncio, timeout, ...): faster and quieter."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


CONFTEST = """
import pytest
from tests.support.services import postgres_database, running_ferry

@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request):
    if request.param == "sqlite":
        yield "sqlite://"
        return
    with postgres_database() as url:
        yield url

@pytest.fixture
def pg_server():
    with postgres_database() as url:
        yield url

@pytest.fixture(scope="session")
def seaweed():
    return object()

@pytest.fixture
def settings(database_url):
    return database_url

@pytest.fixture(params=["sqlite", "postgres"])
def race_server(request, tmp_path):
    if request.param == "sqlite":
        yield request.getfixturevalue("shared_server")
        return
    with postgres_database() as url, running_ferry(tmp_path, {"FERRY_DATABASE_URL": url}) as s:
        yield s
"""

TESTS = """
import pytest
from tests.support import services

def _start_server():
    with services.postgres_database() as url:
        return url

def test_twin(database_url): pass

def test_twin_through_settings(settings): pass

@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_only(database_url): pass

def test_postgres_fixture(pg_server): pass

def test_postgres_helper():
    _start_server()

def test_s3_fixture(seaweed): pass

@pytest.mark.parametrize("storage", ["local", "s3"])
def test_storage(storage): pass

def test_race(race_server): pass

def test_plain(): pass
"""


def collected(pytester: pytest.Pytester, *args: str) -> set[str]:
    result = pytester.runpytest("--collect-only", "-q", "-p", "tests.support.markers", *args)
    return {line.split("::", 1)[1] for line in result.stdout.lines if "::" in line}


@pytest.fixture
def sample(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(MARKERS_INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_sample=TESTS)
    return pytester


def test_a_sqlite_test_is_not_marked_postgres_and_its_postgres_twin_is(
    sample: pytest.Pytester,
) -> None:
    assert collected(sample, "-m", "postgres") == {
        "test_twin[postgres]",
        "test_twin_through_settings[postgres]",
        "test_postgres_fixture",
        "test_postgres_helper",
        "test_race[postgres]",
    }
    not_postgres = collected(sample, "-m", "not postgres")
    assert {"test_twin[sqlite]", "test_twin_through_settings[sqlite]"} <= not_postgres
    assert "test_sqlite_only[sqlite]" in not_postgres


def test_s3_comes_from_the_fixture_or_the_parameter(sample: pytest.Pytester) -> None:
    assert collected(sample, "-m", "s3") == {"test_s3_fixture", "test_storage[s3]"}
    assert collected(sample, "-m", "not postgres and not s3 and not node and not browser") == {
        "test_twin[sqlite]",
        "test_twin_through_settings[sqlite]",
        "test_sqlite_only[sqlite]",
        "test_storage[local]",
        "test_race[sqlite]",
        "test_plain",
    }


def test_serve_comes_from_what_a_parametrized_fixture_refers_to_whatever_its_parameter(
    sample: pytest.Pytester,
) -> None:
    assert collected(sample, "-m", "serve") == {"test_race[sqlite]", "test_race[postgres]"}


def test_a_test_that_gets_postgres_without_the_marker_fails(pytester: pytest.Pytester) -> None:
    pytester.makeini(MARKERS_INI)
    pytester.makepyfile(
        test_hidden="""
        from tests.support import services

        def test_hidden():
            with getattr(services, "postgres_" + "database")():
                pass
        """
    )
    result = pytester.runpytest("-p", "tests.support.markers")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*gets a PostgreSQL database but is not marked 'postgres'*"])


def test_the_suite_marks_the_postgres_twins_and_not_the_sqlite_tests(
    pytester: pytest.Pytester,
) -> None:
    """The real wiring (tests/conftest.py), on a module with twins and SQLite-only tests."""
    module = PROJECT_ROOT / "tests" / "integration" / "test_auth.py"

    def ids(marker_expression: str) -> set[str]:
        result = pytester.runpytest(
            *("--collect-only", "-q", "-m", marker_expression),
            *("--rootdir", str(PROJECT_ROOT), "-c", str(PROJECT_ROOT / "pyproject.toml")),
            str(module),
        )
        return {line for line in result.stdout.lines if "::" in line}

    postgres, others = ids("postgres"), ids("not postgres")
    assert postgres and all(test.endswith("[postgres]") for test in postgres)
    assert {test.replace("[postgres]", "[sqlite]") for test in postgres} <= others
    sqlite_only = "::test_keys_cli_prints_the_key_alone_and_revokes_it[sqlite]"
    assert any(test.endswith(sqlite_only) for test in others)
    assert not any("test_keys_cli_prints" in test for test in postgres)
