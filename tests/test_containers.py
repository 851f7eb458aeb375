"""The container files, proved without a container engine.

No Docker or Podman runs here, so each claim the files make is checked on its own:
``compose.yml`` against the Compose specification schema (vendored in check-jsonschema, no
download), the ``Containerfile`` with hadolint, and every path, command, flag and setting
the two files refer to against this checkout and this test environment.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from ruamel.yaml import YAML

from app.settings import ENV_PREFIX, Settings, SettingsError, load_settings
from tests.support.seaweed import S3Endpoint
from tests.support.services import (
    PROJECT_ROOT,
    free_port,
    postgres_available,
    require_service,
    running_ferry,
)

BIN = PROJECT_ROOT / ".venv" / "bin"
CONTAINERFILE = PROJECT_ROOT / "Containerfile"
COMPOSE = PROJECT_ROOT / "compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
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


def _ferry_commands() -> set[str]:
    """Every ``ferry <subcommand>`` either file runs."""
    found: set[str] = set()
    for keyword, argument in _instructions():
        if keyword in {"CMD", "HEALTHCHECK", "RUN"}:
            found.update(re.findall(r'"ferry",\s*"([a-z]+)"', argument))
    for service in _compose()["services"].values():
        for key in ("command",):
            value = service.get(key)
            if isinstance(value, list) and value[:1] == ["ferry"]:
                found.add(value[1])
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["ferry"]:
            found.add(test[2])
    return found


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


def test_containerfile_is_multi_stage_non_root_with_health_check_and_serve_command() -> None:
    instructions = _instructions()
    stages = [argument for keyword, argument in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    users = [argument for keyword, argument in instructions if keyword == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    assert any(keyword == "HEALTHCHECK" for keyword, _ in instructions)
    cmd = [argument for keyword, argument in instructions if keyword == "CMD"][-1]
    assert msgspec.json.decode(cmd) == ["ferry", "serve"]
    # The Python of the image satisfies the project's requires-python.
    assert all("python:3.11" in stage or "python:3.12" in stage for stage in stages)


def test_every_path_the_containerfile_copies_exists_in_the_checkout() -> None:
    copied = 0
    for keyword, argument in _instructions():
        if keyword != "COPY" or "--from=" in argument:
            continue
        *sources, _target = shlex.split(argument)
        for source in sources:
            assert (PROJECT_ROOT / source).exists(), source
            copied += 1
    assert copied >= 5


def test_compose_build_context_and_containerfile_exist() -> None:
    for service in _compose()["services"].values():
        build = service.get("build")
        if build:
            context = PROJECT_ROOT / build["context"]
            assert context.is_dir()
            assert (context / build["dockerfile"]).is_file()


def test_every_ferry_command_the_files_run_exists() -> None:
    commands = _ferry_commands()
    assert {"serve", "migrate", "healthcheck"} <= commands
    for command in sorted(commands):
        result = _run([str(BIN / "ferry"), command, "--help"], timeout=60)
        assert result.returncode == 0, (command, result.stderr)


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
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", compose_text))
    example = ENV_EXAMPLE.read_text()
    for name in referenced:
        assert re.search(rf"^{name}=\S", example, flags=re.MULTILINE), (
            f"{name} not set in .env.example"
        )
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


def test_ferry_migrate_and_healthcheck_run(tmp_path: Path) -> None:
    env_file_dir = tmp_path / "cwd"
    env_file_dir.mkdir()
    env = {
        "PATH": str(BIN),
        "FERRY_DATA_DIR": str(tmp_path / "data"),
        "FERRY_AUTH": "keys",
    }
    migrated = _run(
        [str(BIN / "ferry"), "migrate"],
        env=env,
        cwd=env_file_dir,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stderr
    down = _run(
        [
            str(BIN / "ferry"),
            "healthcheck",
            "--url",
            f"http://127.0.0.1:{free_port()}/health/ready",
        ],
        timeout=60,
    )
    assert down.returncode == 1
    with running_ferry(tmp_path, {"FERRY_AUTH": "keys"}) as server:
        up = _run(
            [str(BIN / "ferry"), "healthcheck"],
            env={**env, "FERRY_PORT": str(server.port)},
            cwd=env_file_dir,
            timeout=60,
        )
        assert up.returncode == 0, up.stderr


def test_postgres_health_check_command_runs() -> None:
    require_service(postgres_available(), "PostgreSQL is not running on 127.0.0.1:5432")
    test = _compose()["services"]["postgres"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    result = _run(test[1:], timeout=30)
    # pg_isready only asks whether the server accepts connections; the role need not exist.
    assert result.returncode == 0, result.stdout + result.stderr


def test_seaweedfs_command_flags_exist_and_its_health_check_url_answers(
    seaweed: S3Endpoint,
) -> None:
    service = _compose()["services"]["seaweedfs"]
    command = service["command"]
    assert command[0] == "mini"
    usage = _run([str(BIN / "weed"), "mini", "-h"], timeout=60)
    flags = set(
        re.findall(r"^\s+-([a-zA-Z0-9.]+)", usage.stdout + usage.stderr, flags=re.MULTILINE)
    )
    for argument in command[1:]:
        assert argument.lstrip("-").split("=", 1)[0] in flags, argument
    test = service["healthcheck"]["test"]
    port = re.search(r"-s3.port=(\d+)", " ".join(command))
    assert port is not None and f":{port.group(1)}/" in test[-1]
    # Same check against the SeaweedFS the tests run (its S3 port differs).
    url = re.sub(r"http://127.0.0.1:\d+", seaweed.url, test[-1])
    result = _run([*test[1:-1], url], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


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
