"""The deployment files name only what the gateway has (issue 18).

They fail if the compose stack, its .env example, a Kubernetes manifest, the Dockerfile or
docs/deployment.md names a ``LORAGATE_*`` variable that is not a Settings field, a repository path
that does not exist, a ``loragate`` command or flag that service/cli.py does not define, or a gateway
port other than the one the gateway's own settings (its image's, its environment's, its flags) give.
Each gateway container's settings are built for real, with ``service.config``, from that environment.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from pydantic import BaseModel

from service.cli import _settings, build_parser
from service.config import Settings

from .test_manifests import KUBE, OVERLAYS, ROOT, containers, render

COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
CLI_ENV = {"LORAGATE_CONFIG"}  # read by service/cli.py itself, not a Settings field
ENV_NAME = re.compile(r"\bLORAGATE_[A-Z0-9_]*[A-Z0-9]")
REPO_PATH = re.compile(r"(?<![\w/.])(?:deploy|docs|prompts|service|adapters|docker|tests)/[\w./-]*[\w/]")
BACKTICKED_COMMAND = re.compile(r"`(loragate [^`<>.]+)`")
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def unknown_env_names(text: str, model: type[BaseModel] = Settings) -> set[str]:
    """LORAGATE_* names in ``text`` that are no field (``A__B``: field ``b`` of the nested model ``a``)."""
    unknown = set()
    for name in set(ENV_NAME.findall(text)) - CLI_ENV:
        fields: Mapping[str, Any] = model.model_fields
        for part in name.removeprefix("LORAGATE_").lower().split("__"):
            field = fields.get(part)
            nested = getattr(field, "annotation", None)
            if field is None:
                unknown.add(name)
                break
            fields = nested.model_fields if isinstance(nested, type) and issubclass(nested, BaseModel) else {}
    return unknown


def missing_paths(text: str) -> set[str]:
    return {p for p in REPO_PATH.findall(text) if not (ROOT / p.rstrip("/.")).exists()}


def cli_error(argv: list[str]) -> str | None:
    """What ``loragate ARGV`` would refuse (unknown command, flag or choice), or None."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser(argv).parse_args(argv)
    except SystemExit:
        return stderr.getvalue().strip().splitlines()[-1]
    return None


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LORAGATE_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        yield


def gateway_settings(env: Mapping[str, str], argv: list[str]) -> Settings:
    """The Settings ``loragate ARGV`` builds in a container with ``env`` (argv: after ``loragate``)."""
    assert cli_error(argv) is None, cli_error(argv)
    with environment(env):
        return _settings(build_parser(argv).parse_args(argv))


def interpolate(value: str, defined: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``; unset required keys get random ones."""

    def one(match: re.Match[str]) -> str:
        name, operator, word = match.groups()
        if defined.get(name):
            return defined[name]
        assert name in defined or operator, f"${{{name}}} is neither in .env.example nor has a default"
        return word if operator and operator.endswith("-") else "sk-" + secrets.token_hex(16)

    return VARIABLE.sub(one, value)


def dockerfile_stages() -> dict[str, dict[str, Any]]:
    """Stage name -> its ``env`` and ``argv`` (entry point + command), inherited from its parent stage."""
    lines = re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()
    stages: dict[str, dict[str, Any]] = {}
    stage: dict[str, Any] = {}
    for line in (raw.strip() for raw in lines):
        word, _, rest = line.partition(" ")
        if word == "FROM":
            parent, _, name = rest.partition(" AS ")
            inherited = stages.get(parent, {"env": {}, "entrypoint": [], "cmd": []})
            stage = stages[name] = {key: type(value)(value) for key, value in inherited.items()}
        elif word == "ENV":
            stage["env"].update(item.split("=", 1) for item in shlex.split(rest))
        elif word == "ENTRYPOINT":  # resets the command, as Docker does
            stage["entrypoint"], stage["cmd"] = yaml.safe_load(rest), []
        elif word == "CMD":
            stage["cmd"] = yaml.safe_load(rest)
    for stage in stages.values():
        stage["argv"] = stage["entrypoint"] + stage["cmd"]
    return stages


def dockerfile_copy_sources() -> list[str]:
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def deployment_texts() -> dict[Path, str]:
    files = [COMPOSE, COMPOSE_DIR / ".env.example", DOCKERFILE, ROOT / "docs" / "deployment.md"]
    files += sorted(p for p in (ROOT / "deploy").rglob("*") if p.suffix in (".yaml", ".yml"))
    return {path: path.read_text() for path in files}


# -- the checker, on planted mistakes ---------------------------------------------------------------
def test_the_checker_catches_planted_mistakes() -> None:
    text = "LORAGATE_UPSTREAM_KEY=x LORAGATE_PORT=1 LORAGATE_REDIS__URL=y LORAGATE_CONFIG=z LORAGATE_*"
    assert unknown_env_names(text) == {"LORAGATE_UPSTREAM_KEY", "LORAGATE_REDIS__URL"}

    class Inner(BaseModel):
        url: str = ""

    class Outer(BaseModel):
        redis: Inner = Inner()

    assert unknown_env_names("LORAGATE_REDIS__URL LORAGATE_REDIS__URI", Outer) == {"LORAGATE_REDIS__URI"}
    assert missing_paths("see deploy/prometheus/rules/alerts.yml and deploy/prometheus/rulez.yml") == {
        "deploy/prometheus/rulez.yml"
    }
    assert cli_error(["serve", "--upstreams", "http://a:1"]) is not None
    assert cli_error(["serve", "--engine", "tpu"]) is not None
    assert cli_error(["deploy"]) is not None
    assert cli_error(["serve", "--engine", "vllm", "--upstream", "http://a:1"]) is None
    assert gateway_settings({"LORAGATE_PORT": "8080"}, ["serve"]).port == 8080
    with pytest.raises(Exception, match="port"):
        gateway_settings({"LORAGATE_PORT": "eighty"}, ["serve"])
    assert interpolate("${A:-1}/${B}/${C:?set C}", {"B": "2", "C": ""}).startswith("1/2/sk-")


# -- the files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", list(deployment_texts()), ids=lambda p: str(p.relative_to(ROOT)))
def test_names_and_paths_exist(path: Path) -> None:
    text = path.read_text()
    assert not unknown_env_names(text), f"{path.name}: not Settings fields: {sorted(unknown_env_names(text))}"
    assert not missing_paths(text), (
        f"{path.name}: no such path in the repository: {sorted(missing_paths(text))}"
    )
    for command in BACKTICKED_COMMAND.findall(text):
        error = cli_error(shlex.split(command)[1:])
        assert error is None or "are required" in error, (
            f"{path.name}: `{command}`: {error}"
        )  # named, not run


def test_dockerfile_copies_what_exists_and_exposes_the_gateways_port() -> None:
    assert all((ROOT / source).exists() for source in dockerfile_copy_sources()), dockerfile_copy_sources()
    stages = dockerfile_stages()
    exposed = {int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", DOCKERFILE.read_text(), re.M)}
    for target in ("gateway", "cpu"):
        env, argv = stages[target]["env"], stages[target]["argv"]
        assert argv[0] == "loragate"
        run = {"LORAGATE_API_KEY": "sk-" + secrets.token_hex(16), "LORAGATE_UPSTREAM": "http://vllm:8000"}
        if target == "cpu":
            run.pop("LORAGATE_UPSTREAM")
        settings = gateway_settings({**env, **run}, argv[1:])
        assert exposed == {settings.port}, target
        assert settings.engine == ("local" if target == "cpu" else "vllm")


def test_compose_gateways_listen_where_they_are_published_and_scraped() -> None:
    defined = dict(
        line.split("=", 1)
        for line in (COMPOSE_DIR / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    compose = yaml.safe_load(COMPOSE.read_text())
    stages = dockerfile_stages()
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    (scraped,) = [c["dns_sd_configs"][0] for c in prometheus["scrape_configs"] if c["job_name"] == "loragate"]
    gateways = {name: s for name, s in compose["services"].items() if "build" in s}
    assert set(gateways) == {"gateway", "gateway-cpu"}
    for name, service in gateways.items():
        image = stages[service["build"]["target"]]
        env = {k: interpolate(str(v), defined) for k, v in service["environment"].items()}
        command = service.get("command", image["argv"][1:])
        settings = gateway_settings({**image["env"], **env}, command)
        published = {int(interpolate(p, defined).rsplit(":", 1)[1]) for p in service["ports"]}
        assert published == {settings.port} == {scraped["port"]}, name
        assert "gateway" in service["networks"]["default"]["aliases"] and scraped["names"] == ["gateway"]
    assert (ROOT / "deploy" / "compose" / gateways["gateway"]["build"]["context"]).resolve() == ROOT


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_gateways_listen_on_their_ports(overlay: str) -> None:
    stages = dockerfile_stages()
    for container in containers(render(KUBE / "overlays" / overlay)):
        name, _, tag = container["image"].partition(":")
        if name != "loragate":
            continue
        env = {e["name"]: e.get("value", "sk-" + secrets.token_hex(16)) for e in container["env"]}
        settings = gateway_settings({**stages[tag]["env"], **env}, container["args"])
        assert {p["containerPort"] for p in container["ports"] if p["name"] == "http"} == {settings.port}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "http"


# -- compose: what services, mounts and monitoring refer to ------------------------------------------
def _bind_source(volume: str | dict[str, Any]) -> str:
    return volume["source"] if isinstance(volume, dict) else volume.split(":")[0]


def test_compose_references_resolve() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on {dependency}, which is no service"
            needed = set(services[dependency].get("profiles", []))
            assert not needed or needed >= set(service.get("profiles", [])), (
                f"{name} -> {dependency}: profiles"
            )
        for volume in service.get("volumes", []):
            source = _bind_source(volume)
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in volumes, f"{name} mounts volume {source}, which is not declared"
        for kind in ("secrets", "configs"):
            for ref in service.get(kind, []):
                assert (ref if isinstance(ref, str) else ref["source"]) in compose.get(kind, {}), (name, ref)
        if "build" in service:
            assert service["build"]["target"] in dockerfile_stages(), f"{name}: no such Dockerfile target"
        assert service.get("restart") == "unless-stopped" and service.get("healthcheck"), name
    used = {v for s in services.values() for v in s.get("volumes", []) if not _bind_source(v).startswith(".")}
    assert {_bind_source(v) for v in used} == volumes, "declared volumes that nothing mounts"


def test_compose_env_example_covers_the_variables_and_profiles() -> None:
    text = COMPOSE.read_text()
    example = (COMPOSE_DIR / ".env.example").read_text()
    defined = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line and line[0] != "#"}
    required = {name for name, operator, _ in VARIABLE.findall(text) if not operator.endswith("-")}
    assert required <= defined, f"set in .env.example: {sorted(required - defined)}"
    assert defined - {"COMPOSE_PROFILES"} <= {name for name, _, _ in VARIABLE.findall(text)}, "unused"
    profiles = {p for s in yaml.safe_load(text)["services"].values() for p in s.get("profiles", [])}
    assert profiles == {"cpu", "gpu"}
    (line,) = [line for line in example.splitlines() if line.startswith("COMPOSE_PROFILES=")]
    assert line.split("=", 1)[1] in profiles


def test_compose_tenants_file_loads_with_its_templates() -> None:
    from service.prompts import TemplateStore
    from service.tenancy import parse_tenants

    tenants = parse_tenants((COMPOSE_DIR / "tenants.yaml").read_text(), "base", "test")
    store = TemplateStore(ROOT / "prompts")  # mounted at /config/prompts
    for department in (d for t in tenants for d in t.departments.values() if d.template):
        store.get(department.template)


def test_compose_monitoring_mounts_the_repositorys_rules_and_dashboards() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    prometheus_mounts = _mounts(compose["prometheus"])
    assert prometheus_mounts["../prometheus/rules"] == "/etc/prometheus/rules"
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (ROOT / "deploy" / "prometheus" / rule_file).exists(), rule_file  # rules/ beside the config
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    upstream_jobs = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert jobs == {job["job_name"] for job in upstream_jobs["scrape_configs"]}, "the rules select these jobs"
    grafana_mounts = _mounts(compose["grafana"])
    provider = yaml.safe_load((COMPOSE_DIR / grafana_mounts_source(grafana_mounts, "dashboards")).read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert grafana_mounts["../grafana/dashboards"] == dashboards_dir
    datasource = yaml.safe_load((COMPOSE_DIR / "grafana" / "datasources.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"


def _mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """source -> target of a service's short-syntax volumes (SOURCE:TARGET[:MODE])."""
    return dict(volume.split(":")[:2] for volume in service["volumes"])


def grafana_mounts_source(mounts: Mapping[str, str], folder: str) -> str:
    (source,) = [
        s for s, target in mounts.items() if target.startswith(f"/etc/grafana/provisioning/{folder}/")
    ]
    return source


@pytest.mark.skipif(shutil.which("promtool") is None and os.environ.get("CI") != "true", reason="no promtool")
def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    """Laid out as in the container: prometheus.yml with the repository's rules/ beside it."""
    shutil.copy(COMPOSE_DIR / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(ROOT / "deploy" / "prometheus" / "rules", tmp_path / "rules")
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
