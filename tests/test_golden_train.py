"""The trainer merge changed no number of the study: tokenisation, PRO (n = 2, 3, 4, with and without temperatures) and
SFT losses on a fixed batch of the study's data, and four trained cells' final weights, against the values the
pre-merge code recorded (``tests/fixtures/golden_train/golden.json``, made by ``make_golden.py`` beside it at commit
b0029ce, whose training code is 06fb4eb's).

Bit-exact on the machine kind that recorded them (same torch, same CPU capability); elsewhere the BLAS kernels may
round differently, so the losses are compared to 1e-5 relative and the weight hashes are not compared.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from divscale.config import Recipe
from divscale.train.runs import RunLog, train_run
from divscale.train.trainer import RankingCollator, RankingConfig, RankingTrainer, ranked_rows

FIXTURE = Path(__file__).parent / "fixtures" / "golden_train"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
SAME_MACHINE = (GOLDEN["provenance"]["torch"] == torch.__version__
                and GOLDEN["provenance"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability())
RENAMED = {"sft_beta": "sft_scale"}                 # log keys renamed by the merge (the SFT weight is not a beta)


def _script():
    spec = importlib.util.spec_from_file_location("make_golden", FIXTURE / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden_policy():
    """The fixture's tiny-gpt (the script's own builder: BPE + 20 warm-up steps on the fixture texts, cached)."""
    torch.set_num_threads(1)
    model, tokenizer = _script().policy()
    model.eval()
    return model, tokenizer


def same(new: float, old: float) -> bool:
    return new == old if SAME_MACHINE else new == pytest.approx(old, rel=1e-5, abs=1e-6)


def test_tokenisation_is_the_studys(golden_policy):
    _, tokenizer = golden_policy
    rows = _script().rankings()[:4]
    for n in (1, 2, 3, 4):
        encoded = RankingCollator(tokenizer, 192, 128, best_only=n == 1).encode(ranked_rows(rows, n))
        flat = [(p + c, len(p)) for p, cs in encoded for c in cs]
        want = GOLDEN["batch"][f"n={n}"]
        assert [p for _, p in flat] == want["prompt_lens"] and [len(ids) for ids, _ in flat] == want["lengths"]
        assert hashlib.sha256(json.dumps(flat).encode()).hexdigest() == want["tokens_sha256"], f"n={n}"


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_pro_and_sft_losses_on_a_fixed_batch(golden_policy, tmp_path, n):
    model, tokenizer = golden_policy
    rows = ranked_rows(_script().rankings()[:4], n)
    for key, want in GOLDEN["batch"][f"n={n}"].items():
        if not key.startswith("share="):
            continue
        share, temperature = (part.split("=")[1] == "True" for part in key.split(","))
        args = RankingConfig(output_dir=str(tmp_path), use_cpu=True, loss_type=["sft" if n == 1 else "pro"],
                             use_temperature=temperature and n > 1, sft_reduction="sequence_sum", max_length=192,
                             max_prompt_length=128, share_prompt=share, disable_dropout=False)
        trainer = RankingTrainer(model=model, args=args, processing_class=tokenizer)
        batch = trainer.data_collator(rows)
        with torch.no_grad():
            loss = trainer.compute_loss(model, batch).item()
            logp, count = trainer.score(model, batch)
        assert same(loss, want["loss"]), (key, loss, want["loss"])
        assert count.tolist() == want["count"]
        assert all(same(a, b) for a, b in zip(np.ravel(logp.tolist()), np.ravel(want["logp"]))), key


def golden_recipe() -> Recipe:
    """make_golden.recipe() in the current names."""
    r = Recipe(name="golden")
    for key, value in {"max_steps": 6, "prompts_per_step": 4, "per_device_train_batch_size": 2,
                       "per_device_batch_by_n": {}, "learning_rate": 5e-4, "max_length": 192,
                       "max_prompt_length": 128, "eval_every": 3, "dev_max_new_tokens": 8,
                       "dev_batch_size": 8}.items():
        setattr(r.train, key, value)
    return r


@pytest.mark.parametrize("cell", list(GOLDEN["cells"]))
def test_trained_cells_are_unchanged(golden_policy, tmp_path, cell):
    script = _script()
    algo, n, dev = cell.split("-")[0], int(cell.split("-")[1][1:]), cell.endswith("-dev")
    rankings = script.rankings()
    run_dir = train_run(golden_recipe(), algo, n, 16, 42, grid=rankings, policy=golden_policy,
                        policy_id="golden-tiny-gpt", rm_train=script.LengthRM() if dev else None,
                        dev_prompts=[r["prompt"] for r in rankings[:4]] if dev else None, runs_dir=tmp_path)
    result = json.loads((run_dir / "result.json").read_text())
    want = GOLDEN["cells"][cell]
    assert (result["steps"], result["best_step"], result["selection"]) == \
        (want["steps"], want["best_step"], want["selection"])
    records = [r for r in RunLog(run_dir).records() if "loss" in r]
    assert all(same(r["loss"], w) for r, w in zip(records, want["losses"], strict=True)), cell
    for record, old in zip(records, want["loss_parts"]):
        for key, value in old.items():
            new_key = RENAMED.get(key, key)
            if algo == "sft" and key in ("loss_pro", "loss_total", "loss_sft_weighted", "sft_beta"):
                continue                  # the SFT loss no longer logs PRO's (zero) ranking term around it
            assert same(record[new_key], value), (cell, key)
    if want["dev_rewards"]:
        assert {int(k): v for k, v in result["dev_rewards"].items()} == \
            pytest.approx({int(k): v for k, v in want["dev_rewards"].items()}, rel=0 if SAME_MACHINE else 1e-5)
    if SAME_MACHINE:
        assert result["final_sha256"] == want["final_sha256"], cell
