"""The demo adapters that `make adapters` published, served by vLLM and by the embedded engine.

    python -m loadtests.check_published [--rows 10] [--max-tokens 128]

Serves the registry in ``data/registry`` (aliases ``it-helpdesk`` and ``legal``, L3 where the gate
passed) through the gateway twice on SmolLM2 in float32: in front of a local vLLM (CPU build,
``make vllm``), then on the embedded engine (transformers + PEFT). The same held-out prompts go
to each department with greedy decoding; the script prints, per department, how many answers
are the same text on both engines, how many tokens agree before the first difference, and the
format compliance on each. Needs ``make adapters`` first; takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import httpx
from tqdm import tqdm

from adapters.data import FORMAT_CHECKS, load_instructions, prompt_text
from loadtests.common import MODEL
from loadtests.servers import start_gateway, stop
from loadtests.vllm_server import start_cpu_vllm
from service.keys import KeyStore
from service.model_store import prepare_model
from service.tenancy import TenantDirectory

REGISTRY = Path("data/registry")
DEPARTMENTS = {"it-helpdesk": "adapters/datasets/it-helpdesk/held_out.jsonl",
               "legal": "adapters/datasets/legal/held_out.jsonl"}  # fmt: skip
TENANTS = """
tenants:
  acme:
    default_department: it-helpdesk
    departments:
      it-helpdesk: {adapter: it-helpdesk}
      legal: {adapter: legal}
"""


def build_world(root: Path) -> str:
    """Tenants file, keys and prompts folder around the published registry. Returns acme's key."""
    (root / "registry").symlink_to(REGISTRY.resolve())
    (root / "tenants.yaml").write_text(TENANTS)
    (root / "prompts").mkdir()
    return KeyStore(root / "keys.json", TenantDirectory(root / "tenants.yaml", MODEL)).create("acme")[1]


def answers(port: int, key: str, prompts: dict[str, list[str]], max_tokens: int, desc: str) -> dict:
    """Greedy answers per department, through the gateway at ``port``."""
    out: dict[str, list[str]] = {}
    total = sum(len(p) for p in prompts.values())
    with httpx.Client(timeout=600) as client, tqdm(total=total, desc=desc, unit="answer") as bar:
        for department, texts in prompts.items():
            out[department] = []
            for text in texts:
                reply = client.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}", "X-Department": department},
                    json={"model": MODEL, "messages": [{"role": "user", "content": text}],
                          "max_tokens": max_tokens, "temperature": 0},
                )  # fmt: skip
                reply.raise_for_status()
                out[department].append(reply.json()["choices"][0]["message"]["content"])
                bar.update(1)
    return out


def common_prefix_tokens(tokenizer, a: str, b: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Tokens of ``a`` that agree with ``b`` before the first difference, and ``a``'s length."""
    x, y = tokenizer.encode(a), tokenizer.encode(b)
    same = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
    return same, len(x)


def main(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    if not (REGISTRY / "aliases.json").is_file():
        raise SystemExit("no published adapters in data/registry: run `make adapters` first")
    model_dir = prepare_model(Path("data/models/smollm2-135m-instruct"))
    prompts = {
        department: [prompt_text(row) for row in load_instructions(path)[: args.rows]]
        for department, path in DEPARTMENTS.items()
    }
    root = Path(tempfile.mkdtemp(prefix="loragate-published-"))
    key = build_world(root)
    aliases = json.loads((REGISTRY / "aliases.json").read_text())["aliases"]
    print("serving", {d: aliases[d]["current"] for d in DEPARTMENTS}, f"logs in {root}")
    vllm = start_cpu_vllm(
        model_dir, MODEL, args.vllm_port, root / "vllm.log", max_lora_rank=16, max_num_seqs=8
    )
    try:
        gateway = start_gateway(root, args.gateway_port, ["--engine", "vllm", "--upstream", vllm.url],
                                model_dir, root / "gateway-vllm.log")  # fmt: skip
        try:
            on_vllm = answers(args.gateway_port, key, prompts, args.max_tokens, "vLLM")
        finally:
            stop(gateway)
    finally:
        vllm.stop()
    gateway = start_gateway(root, args.gateway_port, ["--engine", "local"], model_dir, root / "local.log")
    try:
        embedded = answers(args.gateway_port, key, prompts, args.max_tokens, "embedded")
    finally:
        stop(gateway)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    print(f"\n{'department':<14}{'same text':>11}{'tokens agreeing':>18}{'format vLLM':>13}{'embedded':>10}")
    for department in DEPARTMENTS:
        pairs = list(zip(on_vllm[department], embedded[department], strict=True))
        prefix = [common_prefix_tokens(tokenizer, a, b) for a, b in pairs]
        check = FORMAT_CHECKS[department]
        print(
            f"{department:<14}{sum(a == b for a, b in pairs):>6} / {len(pairs):<3}"
            f"{sum(s for s, _ in prefix):>9} / {sum(n for _, n in prefix):<7}"
            f"{sum(map(check, on_vllm[department])):>8} / {len(pairs):<3}"
            f"{sum(map(check, embedded[department])):>5} / {len(pairs)}"
        )
    (root / "answers.json").write_text(json.dumps({"vllm": on_vllm, "embedded": embedded}, indent=2))
    print(f"\nanswers: {root / 'answers.json'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10, help="held-out prompts per department")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--vllm-port", type=int, default=8021)
    parser.add_argument("--gateway-port", type=int, default=8022)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
