"""The compose deployment refers only to real commands and settings, and ships no default secret.

This machine has no Docker engine; `docker compose config` (which needs none) runs when the compose
plugin exists, and the test skips that part otherwise.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from semantik.cli.main import main as cli
from semantik.settings import Settings

COMPOSE = Path(__file__).resolve().parents[1] / "compose"
FILES = [COMPOSE / "docker-compose.yml", COMPOSE / "docker-compose.gpu.yml"]
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?P<op>:?[-?])?(?P<rest>[^}]*)\}")
SECRET = re.compile(r"PASSWORD|TOKEN|API_KEY|SECRET")
SETTINGS = {f"SEMANTIK_{name.upper()}" for name in Settings.model_fields}


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (COMPOSE / ".env.example").read_text().splitlines()]
    return {key.strip(): value.strip() for key, *rest in pairs if key.strip() and not key.startswith("#")
            for value in (rest or [""])}  # fmt: skip


def test_every_service_command_exists() -> None:
    services = load(FILES[0])["services"]
    for name, service in services.items():
        command = service.get("command")
        if name in ("redis",) or command is None:
            continue
        if command[0] == "semantik":
            assert command[1] in cli.commands, (name, command)
        elif command[0] == "arq":
            module, _, attr = command[1].rpartition(".")
            settings_cls = getattr(importlib.import_module(module), attr)
            assert settings_cls.functions and settings_cls.health_check_interval <= 60
        else:
            pytest.fail(f"unexpected command for {name}: {command}")
    assert "healthcheck" in services["worker"] and "--check" in services["worker"]["healthcheck"]["test"]


def test_every_semantik_variable_is_a_real_setting() -> None:
    for path in FILES:
        document = load(path)
        blocks = [service.get("environment", {}) for service in document["services"].values()]
        blocks += [value for key, value in document.items() if key.startswith("x-") and isinstance(value, dict)]
        for block in blocks:
            for key in block:
                if key.startswith("SEMANTIK_") and key != "<<":
                    assert key in SETTINGS, f"{path.name}: {key} is not a setting"
    for key in env_example():
        if key in SETTINGS:
            continue
        # The rest are compose's own knobs; each must be used by the compose file.
        assert f"${{{key}" in FILES[0].read_text(), f".env.example lists {key}, which compose does not use"


def test_no_secret_has_a_default_and_every_variable_is_listed() -> None:
    example = env_example()
    for path in FILES:
        for match in INTERPOLATION.finditer(path.read_text()):
            name, op = match["name"], match["op"] or ""
            assert name in example, f"{name} is missing from compose/.env.example"
            if SECRET.search(name):
                assert op == ":?", f"{name} must be required (${{{name}:?...}}), not defaulted"
                assert example[name] == "", f".env.example must leave {name} empty"


def test_every_service_has_a_healthcheck_and_redis_is_protected() -> None:
    services = load(FILES[0])["services"]
    for name, service in services.items():
        assert "healthcheck" in service, name
    redis_command = services["redis"]["command"]
    assert "--requirepass" in redis_command and "--appendonly" in redis_command
    assert services["api"]["environment"]["SEMANTIK_API_TOKEN"].startswith("${SEMANTIK_API_TOKEN:?")
    for name in ("api", "worker"):
        assert any(v.endswith(":/data/documents:ro") for v in services[name]["volumes"]), name


def test_docker_compose_config_accepts_it(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker compose plugin on this machine")
    env = {"SEMANTIK_REDIS_PASSWORD": "p", "SEMANTIK_QDRANT_API_KEY": "k", "SEMANTIK_API_TOKEN": "t",
           "SEMANTIK_DOCUMENTS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}  # fmt: skip
    args = [docker, "compose", "-f", str(FILES[0]), "-f", str(FILES[1]), "config", "--quiet"]
    ok = subprocess.run(args, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(args, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert refused.returncode != 0 and "SEMANTIK_REDIS_PASSWORD" in refused.stderr
