"""The whole factory on the real SmolLM2, shortened for CI (slow: ~10 minutes on 2 cores).

Every stage runs on SmolLM2 with fewer steps than the demo recipe (`make adapters` runs it in
full): SFT (a quarter of the rows behind the L1 template), reward model (on its own pairs), RLAIF
(reward-model judge, format first; published as L3), DPO, eval on small n (base, L1, L2, L1+L2 as
served, L3; fields parsed; the forgetting gate; judges asked in both orders, the fields judge
too), publish (behind the L2 gate that counts: loss at least 25% below the base in 24 steps), a
short RLOO with its KL penalty and plot, and then the gateway serves the
published adapter with the embedded engine, token for token as PEFT's own greedy generate
(float32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from adapters.cli import run_chain, run_step
from adapters.recipe import Recipe, load_recipe
from service.app import create_app
from service.domain import ChatMessage
from service.keys import KeyStore
from service.tenancy import TenantDirectory

from ..conftest import make_settings, wait_ready
from .conftest import HELPDESK

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
CI_OVERRIDES = [
    "sft.epochs=1",
    "sft.max_steps=24",
    "sft.batch_size=4",
    "reward.max_steps=8",
    "dpo.max_steps=4",
    "rlaif.prompts=8",
    "rlaif.max_new_tokens=96",
    "rlaif.max_steps=4",
    "rlaif.batch_size=4",
    "rl.max_steps=2",
    "rl.prompts=4",
    "rl.batch_size=4",
    "rl.num_generations=2",
    "rl.max_completion_length=32",
    "eval.limit=8",  # per set: 8 unseen + 8 independent requests, 8 forgetting and off-domain prompts
    "eval.max_new_tokens=96",
    "eval.batch_size=16",
    "gate_l2.min_format=0.5",  # the full recipe asks 0.95; 24 steps are not a full epoch
    # on the unseen split a full L2 lowers the loss by 41-47% (docs/adapters.md), 24 steps by less
    "gate_l2.min_loss_reduction=0.25",
    "gate_l3.min_format=0.5",
    "gate_l3.min_win_rate=0",
    "publish.alias=it-helpdesk",
    # DPO from a 24-step L2 at the demo recipe's rate loses the format (0% here): CI publishes RLAIF
    "publish.l3=rlaif",
]


@pytest.fixture(scope="module")
def chain(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    root = tmp_path_factory.mktemp("smollm2-factory")
    recipe = load_recipe(
        HELPDESK,
        [f"base_model={smollm2_dir}", f"runs_dir={root / 'runs'}", f"publish.registry={root / 'registry'}"]
        + CI_OVERRIDES,
    )
    for step in ("sft", "reward", "rlaif", "dpo"):  # before the chain, so that its eval covers both
        run_step(recipe, step)
    run_chain(recipe)  # the steps are done: eval, publish
    run_step(recipe, "rl")
    return recipe


def report(recipe: Recipe) -> dict[str, Any]:
    return json.loads((recipe.run_dir("eval") / "report.json").read_text())


def test_l2_learns_the_department_format(chain: Recipe) -> None:
    variants = report(chain)["variants"]
    assert variants["base"]["format_compliance"] < 0.1
    assert variants["sft"]["format_compliance"] >= 0.5
    assert variants["sft"]["loss_reduction"] >= 0.25


def test_eval_has_the_l1_row_fields_forgetting_gate_and_both_judge_orders(chain: Recipe) -> None:
    r = report(chain)
    assert list(r["variants"])[:4] == ["base", "l1", "sft", "l1+sft"]
    assert r["sets"] == {"held_out": 8, "independent": 8}
    for name in ("l1", "l1+sft"):
        assert r["variants"][name]["l1_template"] is True
    sft = r["variants"]["sft"]["sets"]
    for set_name in ("held_out", "independent"):
        fields = sft[set_name]["fields"]
        assert {"category", "priority", "escalate", "steps", "all"} <= fields.keys()
        assert fields["priority"]["k"] > 0  # parsed from L2's tickets, compared with the expected value
    gate = r["forgetting"]["sft"]["gate"]
    assert r["forgetting"]["base"]["overall"]["n"] == 8 and {"diff", "low", "high", "passed"} <= gate.keys()
    assert r["off_domain"]["sft"]["in_department_format"]["n"] == 8
    verdicts = [
        json.loads(line) for line in (chain.run_dir("eval") / "verdicts.jsonl").read_text().splitlines()
    ]
    llm = [v for v in verdicts if v["judge"] == "llm"]
    assert llm and all({"p_a_first", "p_a_second"} <= v["detail"].keys() for v in llm)
    assert r["judge"] == "reward"  # trained on its own pairs: independent of DPO's
    assert {"rule", "fields", "reward", "llm"} <= r["win_rates"]["rlaif_vs_sft"].keys()
    assert r["judge_agreement"]["rlaif_vs_sft"][0]["n"] == 16


def test_every_stage_left_its_figures(chain: Recipe) -> None:
    sft = json.loads((chain.run_dir("sft") / "metrics.json").read_text())
    assert sft["template_rows"] > 0  # a quarter of the department's rows train behind the L1 template
    reward = json.loads((chain.run_dir("reward") / "metrics.json").read_text())
    assert reward["held_out_accuracy"] > 0.5
    assert reward["independent_of_dpo"] is True
    verdicts = (chain.run_dir("rlaif") / "verdicts.jsonl").read_text().splitlines()
    assert len(verdicts) == 8
    rl = json.loads((chain.run_dir("rl") / "metrics.json").read_text())
    assert rl["global_step"] == 2 and rl["last_reward"] is not None
    assert rl["kl_weight"] == 0.05 and rl["last_kl"] is not None  # the KL penalty is on by default
    assert (chain.run_dir("rl") / "reward_kl.png").stat().st_size > 0
    dpo = json.loads((chain.run_dir("dpo") / "metrics.json").read_text())
    assert dpo["global_step"] == 4
    assert {"rlaif_vs_sft", "dpo_vs_sft"} <= report(chain)["win_rates"].keys()


async def test_the_gateway_serves_the_published_adapter_as_peft_does(chain: Recipe, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    (tmp_path / "tenants.yaml").write_text(
        "tenants:\n  acme:\n    departments:\n      it: {adapter: it-helpdesk}\n"
    )
    settings = make_settings(
        chain.base_model,
        model_name=MODEL,
        tenants_file=tmp_path / "tenants.yaml",
        keys_file=tmp_path / "keys.json",
        registry_dir=chain.publish.registry,
        default_max_tokens=48,
    )
    key = KeyStore(settings.keys_file, TenantDirectory(settings.tenants_file, MODEL)).create("acme", "it")[1]
    question = "Good morning. My VPN keeps disconnecting. I have a meeting in an hour."
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            await wait_ready(client)
            response = await client.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": MODEL, "messages": [{"role": "user", "content": question}],
                      "temperature": 0, "max_tokens": 48},
            )  # fmt: skip
            assert response.status_code == 200, response.text
            engine = app.state.loragate.engine
            ids = torch.tensor([engine.encode([ChatMessage("user", question)])])
    served = response.json()["choices"][0]["message"]["content"]
    ref = response.headers["x-loragate-adapter"]
    name, _, version = ref.partition("@")
    versions = (chain.publish.registry / "adapters" / name).iterdir()
    assert ref == f"it-helpdesk@{max(int(p.name) for p in versions)}"  # the alias: the latest (L3)
    folder = chain.publish.registry / "adapters" / name / version
    base = AutoModelForCausalLM.from_pretrained(chain.base_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, folder).eval()
    out = model.generate(ids, max_new_tokens=48, do_sample=False)
    expected = engine._tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert served == expected.strip() or served == expected
    assert served.startswith("TICKET:")
