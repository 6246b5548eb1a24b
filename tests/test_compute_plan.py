"""divscale grid --plan: parameter counts on the meta device and the stated memory / token / GPU-hour arithmetic."""
from __future__ import annotations

import json

import pytest

from divscale import cli
from divscale.tools import gpu_plan as compute_plan

GIB = 1024 ** 3


def test_memory_and_hours_arithmetic_on_a_hand_computed_case():
    # 1e9 params on 4 GPUs, ZeRO-2: bf16 weights 2P everywhere, bf16 grads 2P/4, fp32 master + Adam 12P/4
    mem = compute_plan.training_memory(params=10**9, world=4, stage=2, layers=10, hidden=1000, vocab=100, seq=100,
                                       micro_seqs=2, rm_bytes=5)
    assert mem["weights"] == 2e9 and mem["gradients"] == 5e8 and mem["optimizer"] == 3e9
    assert mem["activations"] == 34 * 100 * 2 * 1000 * 10 + 6 * 100 * 2 * 100 == 68_120_000
    assert mem["total"] == 2e9 + 5e8 + 3e9 + 68_120_000 + 5
    single = compute_plan.training_memory(10**9, 1, 0, 10, 1000, 100, 100, 2)   # no DeepSpeed: 16 bytes / param
    assert single["weights"] + single["gradients"] + single["optimizer"] == 16e9
    # 6 * 1e9 params * 1e9 tokens = 6e18 FLOPs at 100 TFLOP/s x 50% = 1.2e5 s = 33.3 h
    assert compute_plan.gpu_hours(10**9, 10**9, peak_tflops=100, utilisation=0.5) == pytest.approx(100 / 3)
    assert compute_plan.cell_tokens(4000, 112, 4, 512) == 917_504_000


def test_plan_of_the_paper_opt_recipe(capsys):
    assert cli.main(["grid", "--recipe", "paper-opt-1.3b", "--plan", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    models = p["models"]
    # OPT-1.3B by hand: tokens 50272x2048 + positions 2050x2048 + 24 x (4 attn 2048^2+2048, fc1, fc2, 2 LN) + LN
    layer = 4 * (2048 * 2048 + 2048) + (2048 * 8192 + 8192) + (8192 * 2048 + 2048) + 2 * 2 * 2048
    opt = 50272 * 2048 + 2050 * 2048 + 24 * layer + 2 * 2048
    assert models["facebook/opt-1.3b"]["params"] == opt == 1_315_758_080          # lm_head tied: counted once
    # Pythia-1.4B RM: embeddings 50282x2048 + 24 x (qkv, dense, 4h, 4h->h, 2 LN) + final LN + out_proj (2048 + 1)
    neox = (3 * 2048 * 2048 + 3 * 2048) + (2048 * 2048 + 2048) + (2048 * 8192 + 8192) + (8192 * 2048 + 2048) + 4 * 2048
    rm = 50282 * 2048 + 24 * neox + 2 * 2048 + 2049
    assert models["OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5"]["params"] == rm
    assert isinstance(models["OpenAssistant/oasst-rm-2-pythia-6.9b-epoch-1"]["params"], int)
    assert p["cells"] == 3 * 2 * 3 * 8 and p["zero_stage"] == 2 and p["world"] == 7
    unit = 4000 * 112 * 512                          # one sequence per prompt for a whole cell
    assert p["tokens"] == 3 * 8 * (3 * 1 + (2 + 3 + 4)) * unit == 66_060_288_000   # SFT n=2,3,4 + PRO n
    assert p["gpu_hours"] == pytest.approx(6 * opt * p["tokens"] / (312e12 * 0.40) / 3600)
    # the peak is PRO n=3: 8 prompts x 3 sequences per micro-batch at 512 tokens, RM_train fp32 on the main GPU
    assert p["peak_setting"] == "pro-n3" and p["settings"]["pro-n4"]["grad_accum"] == 4
    want = (2 * opt + 14 * opt / 7 + 34 * 512 * 24 * 2048 * 24 + 6 * 512 * 24 * 50272 + 4 * rm) / GIB
    assert p["per_gpu_memory_gib"] == pytest.approx(want)


def test_plain_plan_prints_the_key_lines(capsys):
    assert cli.main(["grid", "--recipe", "gpu-1", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen2.5-0.5B: 494,032,768 params" in out and "144 cells on 1 GPU(s), no DeepSpeed" in out
    assert "GPU-hours" in out and "peak:" in out


def test_unknown_model_config_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="no config.json for 'nobody/nothing'.*Fix"):
        compute_plan.load_config("nobody/nothing")


MEASURED = {"device": "NVIDIA H200",
            "cells": {"paper-opt-1.3b": {"model": "facebook/opt-1.3b", "setting": "pro-n3", "depth": "full",
                                         "layers_full": 24, "layers_measured": 24, "step_s_median": 1.0,
                                         "tokens_per_s": 20000.0, "tflops_per_s": 100.0, "peak_memory_gib": 40.0,
                                         "predicted_memory_gib_one_process": 32.0, "fits": True,
                                         "generation": {"new_tokens_per_s": 1000.0}}},
            "generator": {"per_prompt": {"new_tokens_per_s": 50.0}, "batched": {"new_tokens_per_s": 500.0}},
            "rm": {"RM_train": {"pairs_per_s": 20.0}, "RM_test": {"pairs_per_s": 10.0}}}


def test_measured_plan_replaces_the_assumptions_stage_by_stage(tmp_path, capsys):
    (tmp_path / "m.json").write_text(json.dumps(MEASURED))
    assert cli.main(["grid", "--recipe", "paper-opt-1.3b", "--plan", "--json", "--measured",
                     str(tmp_path / "m.json")]) == 0
    p = json.loads(capsys.readouterr().out)
    m, cells = p["measured"], p["cells"]
    hours = {k: v["gpu_hours"] * 3600 for k, v in m["stages"].items()}            # seconds of GPU work
    assert hours["training"] == pytest.approx(p["flops"] / 100e12)                  # 6·P·tokens at 100 TFLOP/s
    assert hours["ranking generation"] == pytest.approx(36000 * 2 * 128 / 50 + 36000 * 4 / 20)
    assert m["validation_rounds"] == 4000 // 500 + 1                                # step 0 + every 500 (4000 too)
    assert hours["validation"] == pytest.approx(cells * 9 * (280 * 128 / 1000 + 280 / 20))
    assert hours["evaluation"] == pytest.approx(cells * 8552 * (128 / 1000 + 1 / 10))
    assert m["stages"]["training"]["node_hours"] == pytest.approx(m["stages"]["training"]["gpu_hours"] / 7)
    assert m["stages"]["evaluation"]["node_hours"] == m["stages"]["evaluation"]["gpu_hours"]   # one GPU, 7 held
    assert m["per_gpu_memory_gib"] == pytest.approx(p["per_gpu_memory_gib"] * 40 / 32)
    assert m["gpu_hours"] == pytest.approx(sum(hours.values()) / 3600)
    assert cli.main(["grid", "--recipe", "paper-opt-1.3b", "--plan", "--measured", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert "measured on NVIDIA H200" in text and "validation" in text and "node-hours" in text


def test_measured_plan_without_the_recipes_cell_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "m.json").write_text(json.dumps(MEASURED))
    assert cli.main(["grid", "--recipe", "paper-llama-7b", "--plan", "--measured", str(tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err
    assert "no usable cell for recipe paper-llama-7b" in err and "make gpu-check" in err
    (tmp_path / "bad.json").write_text("{")
    assert cli.main(["grid", "--recipe", "paper-opt-1.3b", "--plan", "--measured", str(tmp_path / "bad.json")]) == 1
    assert "not a readable JSON file" in capsys.readouterr().err
