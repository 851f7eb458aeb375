"""The container files, checked without a container engine.

tests/containers builds the image and runs it, alone and under compose.yml, with podman;
what those runs cannot show is checked here: ``compose.yml`` against the Compose
specification schema (vendored in check-jsonschema, no download), so that Docker Compose
takes it too, the ``Containerfile`` with hadolint, ``requirements.lock`` against
pyproject.toml's dependencies, the settings both files pass to Ferry, and the cluster
profile, which the real runs do not start.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import tomllib
from typing import Any

import msgspec
import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from ruamel.yaml import YAML

from app.settings import ENV_PREFIX, Settings, SettingsError, load_settings
from tests.support.services import PROJECT_ROOT

BIN = PROJECT_ROOT / ".venv" / "bin"
CONTAINERFILE = PROJECT_ROOT / "Containerfile"
COMPOSE = PROJECT_ROOT / "compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
LOCK = PROJECT_ROOT / "requirements.lock"
LOCK_SCRIPT = PROJECT_ROOT / "scripts" / "container-lock.sh"
#: Where the image's Python runs, for the lock's environment markers.
IMAGE_ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
}
SETTING_NAMES = {ENV_PREFIX + field.name.upper() for field in msgspec.structs.fields(Settings)}
STRONG_SIGNING_KEY = "9f2c4e1a7b3d5f608192a3b4c5d6e7f8091a2b3c4d5e6f70"


def _run(args: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    """Run a command for its exit status and output (the tests assert on both)."""
    return subprocess.run(args, check=False, capture_output=True, text=True, **options)


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return loaded


def _instructions() -> list[tuple[str, str]]:
    """Containerfile instructions with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    result = _run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_passes_hadolint() -> None:
    result = _run(
        [str(BIN / "hadolint"), "--failure-threshold", "info", str(CONTAINERFILE)],
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_installs_only_locked_dependencies_for_the_python_they_were_locked_for() -> None:
    runs = " ".join(argument for keyword, argument in _instructions() if keyword == "RUN")
    assert re.search(r"pip install [^&]*--require-hashes [^&]*-r \S*requirements\.lock", runs)
    # Ferry itself adds nothing the lock does not pin, and builds with the locked setuptools.
    ferry_install = re.search(r"pip install ([^&]*) --editable \.", runs)
    assert ferry_install is not None
    assert {"--no-deps", "--no-build-isolation"} <= set(ferry_install.group(1).split())
    assert "pip check" in runs
    stages = [argument for keyword, argument in _instructions() if keyword == "FROM"]
    locked_for = re.search(r"--python-version (\d+\.\d+)", LOCK_SCRIPT.read_text())
    assert locked_for is not None
    assert all(f"/python:{locked_for.group(1)}-" in stage for stage in stages), stages
    requires_python = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert f"{locked_for.group(1)}.0" in requires_python


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


def _locked() -> dict[str, list[tuple[Version, Marker | None]]]:
    """The pins of requirements.lock by normalized name (several when markers split one)."""
    pins: dict[str, list[tuple[Version, Marker | None]]] = {}
    for line in LOCK.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if pin:
            marker = Marker(pin.group(3)) if pin.group(3) else None
            pins.setdefault(canonicalize_name(pin.group(1)), []).append(
                (Version(pin.group(2)), marker)
            )
    return pins


def _pinned_version(pins: dict[str, list[tuple[Version, Marker | None]]], name: str) -> Version:
    """The version the image installs for ``name`` (its Python: 3.11 on Linux)."""
    versions = [
        version
        for version, marker in pins.get(canonicalize_name(name), [])
        if marker is None or marker.evaluate(IMAGE_ENVIRONMENT)
    ]
    assert len(versions) == 1, f"{name}: requirements.lock pins {versions or 'nothing'}"
    return versions[0]


def test_the_lock_pins_every_runtime_and_build_dependency_within_pyprojects_ranges() -> None:
    """A dependency added to pyproject.toml, or a range moved past its pin, fails here
    until scripts/container-lock.sh is run again."""
    pins = _locked()
    pyproject = _pyproject()
    wanted = [Requirement(text) for text in pyproject["project"]["dependencies"]]
    wanted += [Requirement(text) for text in pyproject["build-system"]["requires"]]
    for requirement in wanted:
        assert requirement.specifier.contains(_pinned_version(pins, requirement.name)), (
            f"{requirement} but requirements.lock pins {_pinned_version(pins, requirement.name)}"
        )
        # What an extra (uvicorn[standard], pyjwt[crypto]) brings is pinned too.
        for extra in requirement.extras:
            for text in importlib.metadata.requires(requirement.name) or []:
                brought = Requirement(text)
                if brought.marker and brought.marker.evaluate(
                    {**IMAGE_ENVIRONMENT, "extra": extra}
                ):
                    assert brought.specifier.contains(_pinned_version(pins, brought.name))


def test_every_pin_of_the_lock_carries_hashes() -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    pinned = [block for block in blocks if "==" in block.split("\n", 1)[0]]
    assert len(pinned) >= len(_pyproject()["project"]["dependencies"])
    for block in pinned:
        assert "--hash=sha256:" in block, block.split("\n", 1)[0]


def test_compose_build_context_and_containerfile_exist() -> None:
    for service in _compose()["services"].values():
        build = service.get("build")
        if build:
            context = PROJECT_ROOT / build["context"]
            assert context.is_dir()
            assert (context / build["dockerfile"]).is_file()


def test_env_example_lists_every_setting_and_loads() -> None:
    text = ENV_EXAMPLE.read_text()
    listed = set(re.findall(r"^#?\s*(FERRY_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert SETTING_NAMES - listed == set(), "missing from .env.example"
    assert listed - SETTING_NAMES == set(), "not a setting"
    # Uncommented, the example is a valid configuration.
    uncommented = re.sub(r"^#\s*(FERRY_[A-Z0-9_]+=)", r"\1", text, flags=re.MULTILINE)
    values = dict(
        line.split("=", 1)
        for line in uncommented.splitlines()
        if line.startswith("FERRY_") and "=" in line
    )
    values = {key: value for key, value in values.items() if value}
    # Its placeholder secret is refused until it is changed, as the file says.
    with pytest.raises(SettingsError, match=r"^FERRY_SIGNING_KEY: still the placeholder"):
        load_settings(values, env_file=None)
    load_settings({**values, "FERRY_SIGNING_KEY": STRONG_SIGNING_KEY}, env_file=None)


def _compose_environment(service: dict[str, Any]) -> dict[str, str]:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )

    def interpolate(value: str) -> str:
        # Compose's ${NAME:-default} and ${NAME:?error}, with .env.example as the .env.
        def one(match: re.Match[str]) -> str:
            name, _, rule = match.group(1).partition(":")
            if rule.startswith("-"):
                return example.get(name) or rule[1:]
            return example[name]

        return re.sub(r"\$\{([^}]+)\}", one, value)

    return {key: interpolate(str(value)) for key, value in service.get("environment", {}).items()}


def test_compose_variables_come_from_env_example_and_make_valid_ferry_settings() -> None:
    compose_text = COMPOSE.read_text()
    example = ENV_EXAMPLE.read_text()
    # A variable without a default must be set in .env.example; one with a default must
    # at least be shown there.
    for name, rule in re.findall(r"\$\{([A-Z0-9_]+)(:?[-?]?)", compose_text):
        shown = rf"^{name}=\S" if rule != ":-" else rf"^#?\s*{name}=\S"
        assert re.search(shown, example, flags=re.MULTILINE), f"{name} missing in .env.example"
    services = _compose()["services"]
    for name in ("ferry", "migrate"):
        environment = _compose_environment(services[name])
        assert set(k for k in environment if k.startswith(ENV_PREFIX)) <= SETTING_NAMES
        # The placeholder secret must be changed before use (Ferry refuses it).
        with pytest.raises(SettingsError, match=r"^FERRY_SIGNING_KEY:"):
            load_settings(environment, env_file=ENV_EXAMPLE)
        environment["FERRY_SIGNING_KEY"] = STRONG_SIGNING_KEY
        settings = load_settings(environment, env_file=ENV_EXAMPLE)
        assert settings.storage == "s3"
        assert settings.database_url.startswith("postgresql+asyncpg://ferry:")
        assert "none" not in settings.auth  # the stack binds 0.0.0.0: auth must stay on
    for keyword, argument in _instructions():
        if keyword == "ENV":
            names = set(re.findall(r"(FERRY_[A-Z0-9_]+)=", argument))
            assert names <= SETTING_NAMES


def test_the_cluster_profile_puts_nodes_of_their_own_behind_a_balancer_with_nothing_sticky() -> (
    None
):
    services = _compose()["services"]
    nodes = [name for name, service in services.items() if name.startswith("ferry-")]
    assert sorted(nodes) == ["ferry-a", "ferry-b"]
    ids = {services[name]["environment"]["FERRY_NODE_ID"] for name in nodes}
    assert len(ids) == len(nodes), "every node needs its own FERRY_NODE_ID"
    volumes = {services[name]["volumes"][0].split(":")[0] for name in nodes}
    assert len(volumes) == len(nodes), "every node has a data directory of its own"
    for name in nodes:
        assert services[name]["environment"]["FERRY_STORAGE"] == "s3"
        assert services[name]["profiles"] == ["cluster"]
    balancer = services["balancer"]
    mount = balancer["volumes"][0].split(":")[0]
    config = (PROJECT_ROOT / mount).read_text()
    upstreams = set(re.findall(r"^\s*server\s+([\w-]+):8000", config, flags=re.M))
    assert upstreams == set(nodes)
    directives = {line.split()[0] for line in config.splitlines() if line.strip()}
    assert not directives & {"ip_hash", "hash", "sticky"}, "any node serves any request"
    for needed in ("proxy_request_buffering off;", "client_max_body_size 0;"):
        assert needed in config
