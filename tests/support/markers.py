"""The ``postgres``, ``s3``, ``node``, ``browser`` and ``serve`` markers, derived from what a
test uses.

A pytest plugin (loaded by ``tests/conftest.py``) so that nobody has to remember to mark a
test: at collection every test is marked from

- its parameters: a parameter (direct or of any fixture it uses) whose value is
  ``"postgres"`` or ``"s3"`` (``database_url[postgres]``, ``storage="s3"``, ...);
- the fixtures it uses: ``seaweed``, ``moto_s3``, ``tus_postgres_database``, ``live_ferry``...;
- the names the test function and its unparametrized fixtures refer to, following helper
  functions of their own module: ``postgres_database``, ``node_or_skip``, ...

For ``postgres`` and ``s3`` a parametrized fixture is judged by its parameter only
(``database_url`` mentions ``postgres_database`` but its ``sqlite`` variant never calls
it); for the other markers by the names it refers to, whatever its parameter.

The rules can miss a new way of getting a service, so the services check it at run time:
:func:`expect_marker` fails a test that gets a PostgreSQL database, an S3 server or a
``ferry serve`` process without the marker, so that ``-m "not postgres"`` never runs a test
that needs PostgreSQL.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Needs:
    """What gives a test one marker."""

    params: frozenset[str] = frozenset()
    fixtures: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()


RULES: dict[str, Needs] = {
    "postgres": Needs(
        params=frozenset({"postgres"}),
        fixtures=frozenset({"tus_postgres_database"}),
        names=frozenset({"postgres_database", "postgres_available", "private_postgres"}),
    ),
    "s3": Needs(
        params=frozenset({"s3"}),
        fixtures=frozenset({"seaweed", "moto_s3"}),
        names=frozenset({"run_seaweedfs", "run_moto"}),
    ),
    "node": Needs(names=frozenset({"node_or_skip"})),
    "browser": Needs(fixtures=frozenset({"browser_page"}), names=frozenset({"sync_playwright"})),
    "serve": Needs(
        fixtures=frozenset({"shared_ferry", "live_ferry"}),
        names=frozenset({"running_ferry", "FerryProcess"}),
    ),
}


def needed_markers(item: pytest.Item) -> set[str]:
    """The markers of :data:`RULES` that ``item`` needs."""
    params = _param_values(item)
    fixtures = set(getattr(item, "fixturenames", ()))
    names, names_of_parametrized = _referenced_names(item)
    needed = set()
    for marker, needs in RULES.items():
        used = names if needs.params else names | names_of_parametrized
        if params & needs.params or fixtures & needs.fixtures or used & needs.names:
            needed.add(marker)
    return needed


def _param_values(item: pytest.Item) -> set[str]:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return set()
    return {value for value in callspec.params.values() if isinstance(value, str)}


def _referenced_names(item: pytest.Item) -> tuple[set[str], set[str]]:
    """Global and attribute names used by the test function and its unparametrized
    fixtures, and those used by its parametrized fixtures (following, for both, the
    functions of their own modules that they call)."""
    functions: list[Callable[..., Any]] = []
    parametrized: list[Callable[..., Any]] = []
    test_function = getattr(item, "function", None)
    if test_function is not None:
        functions.append(test_function)
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    if fixtureinfo is not None:
        for name in getattr(item, "fixturenames", ()):
            for fixturedef in _active_definitions(name, fixtureinfo.name2fixturedefs.get(name)):
                (functions if fixturedef.params is None else parametrized).append(fixturedef.func)
    return _names_of(functions), _names_of(parametrized)


def _names_of(functions: Iterable[Callable[..., Any]]) -> set[str]:
    names: set[str] = set()
    seen: set[types.CodeType] = set()
    for function in functions:
        _collect_names(function, names, seen)
    return names


def _active_definitions(name: str, definitions: Iterable[Any] | None) -> Iterator[Any]:
    """The definition of fixture ``name`` the test gets, and the ones it overrides only when
    the overriding definition requests them (by asking for its own name)."""
    for fixturedef in reversed(list(definitions or ())):
        yield fixturedef
        if name not in fixturedef.argnames:
            return


def _collect_names(
    function: Callable[..., Any], names: set[str], seen: set[types.CodeType]
) -> None:
    function = inspect.unwrap(function)
    code = getattr(function, "__code__", None)
    if not isinstance(code, types.CodeType):
        return
    module = getattr(function, "__module__", None)
    namespace: dict[str, Any] = getattr(function, "__globals__", {})
    for code_name in _names_in(code, seen):
        names.add(code_name)
        helper = namespace.get(code_name)
        if inspect.isfunction(helper) and helper.__module__ == module:
            _collect_names(helper, names, seen)


def _names_in(code: types.CodeType, seen: set[types.CodeType]) -> Iterator[str]:
    """``co_names`` of ``code`` and of the code nested in it (closures, comprehensions)."""
    if code in seen:
        return
    seen.add(code)
    yield from code.co_names
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _names_in(constant, seen)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every collected test with the markers it needs."""
    for item in items:
        for marker in sorted(needed_markers(item)):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


_running: list[pytest.Item] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Remember which test is running, for :func:`expect_marker`."""
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def expect_marker(marker: str, what: str) -> None:
    """Fail the running test if it gets ``what`` but is not marked ``marker``.

    Outside a test (``scripts/``) this does nothing.
    """
    if not _running:
        return
    item = _running[-1]
    if item.get_closest_marker(marker) is None:
        pytest.fail(
            f"{item.nodeid} gets {what} but is not marked {marker!r}: "
            f"teach RULES in tests/support/markers.py how it gets it",
            pytrace=False,
        )
