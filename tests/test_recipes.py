"""Recipes: every recipe loads and is consistent; the paper recipes carry spec §3.4 exactly; their code path runs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from transformers import TrainerCallback

from divscale import cli, paths
from divscale.config import load_recipe
from divscale.train import runs as train

RECIPES = sorted(p.stem for p in paths.RECIPES_DIR.glob("*.yaml"))
PAPER = ["paper-opt-1.3b", "paper-llama-7b"]

# spec §3.4: lr, per-GPU batch and gradient accumulation (7 GPUs) for SFT and PRO n = 2, 3, 4
SPEC = {
    "paper-opt-1.3b": {"model": "facebook/opt-1.3b", "lr": 2e-5,
                       "batch": {("sft", 2): (8, 2), ("pro", 2): (8, 2), ("pro", 3): (8, 2), ("pro", 4): (4, 4)}},
    "paper-llama-7b": {"model": "huggyllama/llama-7b", "lr": 5e-6,
                       "batch": {("sft", 2): (4, 4), ("pro", 2): (2, 8), ("pro", 3): (2, 8), ("pro", 4): (1, 16)}},
}

QUESTIONS = ["How do I bake bread?", "What is the capital of France?", "Tell me a joke.", "Why is the sky blue?"]
RANKINGS = [{"id": f"toy-{i}", "prompt": f"\n\nHuman: {q}\n\nAssistant:",
             "responses": ["I am happy to help you with that.", "Sure, let me think.", "No.", "bad bad bad"],
             "rewards": [2.0, 1.0, -0.5, -1.5]} for i, q in enumerate(QUESTIONS)]


class LengthRM:
    def score(self, prompts, responses, **kwargs):
        return np.array([len(r) / 10.0 - 1.0 for r in responses])


class RecordArgs(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.args = args


def test_the_four_recipes_exist():
    assert {"smoke", "cpu", *PAPER} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_is_consistent(name):
    r = load_recipe(name)
    assert r.name == name and r.description
    t = r.train
    assert set(t.algos) <= set(train.ALGOS) and t.seeds
    length = t.max_length if t.max_length is not None else r.policy.block_size
    assert 0 < t.max_prompt_length < length and t.eval_every >= 1 and t.max_steps >= 1
    for algo in t.algos:                                       # every cell has a valid batch plan
        for n in r.data.ranking_lengths:
            per_device, accum = train.batch_plan(t, algo, n, world=t.num_processes)
            assert per_device * accum * t.num_processes == t.prompts_per_step
    if r.data.pool_size is not None:
        assert max(r.data.sizes) <= r.data.pool_size
    for budget in r.grid.equal_budgets:                        # equal-budget cells are cells of the grid
        for n in r.data.ranking_lengths:
            assert budget % n == 0 and budget // n in r.data.sizes, (budget, n)
    if r.policy.model == "tiny-gpt":                           # everything fits the tiny model's positions
        assert length <= r.policy.block_size
        assert r.eval.max_prompt_tokens + r.eval.max_new_tokens <= r.policy.block_size
        assert t.max_prompt_length + t.dev_max_new_tokens <= r.policy.block_size
    if t.accelerate_config:
        assert (paths.RECIPES_DIR / t.accelerate_config).exists()


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_values_are_the_spec(name):
    r, spec = load_recipe(name), SPEC[name]
    t = r.train
    assert r.policy.model == spec["model"] and t.learning_rate == spec["lr"]
    for (algo, n), want in spec["batch"].items():
        assert train.batch_plan(t, algo, n, world=7) == want, (algo, n)
    assert (t.max_steps, t.prompts_per_step, t.num_processes, t.eval_every) == (4000, 112, 7, 500)
    assert (t.max_length, t.max_prompt_length, t.sft_weight, t.use_temperature) == (512, 384, 0.05, True)
    assert (t.weight_decay, t.max_grad_norm, t.bf16) == (0.01, 1.0, True)
    assert (t.dev_max_new_tokens, t.dev_batch_size, t.seeds, t.algos) == (128, 28, [42, 43, 44], ["sft", "pro"])
    assert r.reward.train_model == "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5"
    assert r.reward.test_model == "OpenAssistant/oasst-rm-2-pythia-6.9b-epoch-1"
    assert r.data.sizes == [1500, 2000, 3000, 6000, 12000, 16000, 24000, 36000]
    assert r.data.ranking_lengths == [2, 3, 4] and r.data.dev_size == 280 and r.data.grid_seed == 42
    assert (r.eval.max_new_tokens, r.eval.max_prompt_tokens, r.eval.batch_size) == (128, 384, 28)
    assert r.eval.test_prompts_per_subset is None and r.data.test_size is None
    assert sorted(r.grid.equal_budgets) == [6000, 48000]
    assert t.accelerate_config == "accelerate/zero2.yaml"
    assert r.diversity.tokenizer == "huggyllama/llama-7b"             # d in LLaMA-1 token units (Fig. 4b)
    assert (r.diversity.ngram, r.diversity.exponent, r.diversity.max_tokens) == (2, 0.5, 512)
    assert r.ranking.generator == "Qwen/Qwen2.5-7B-Instruct"          # not SmolLM2 (the cpu generator)
    assert (r.ranking.k, r.ranking.max_new_tokens, r.ranking.max_prompt_tokens) == (2, 128, 384)
    assert r.reward.test_dtype == "float32" and r.reward.dtype == "float32"   # the paper scored in fp32


def test_accelerate_zero2_config():
    from accelerate.commands.config.config_args import load_config_from_file

    path = paths.RECIPES_DIR / "accelerate" / "zero2.yaml"
    cfg = load_config_from_file(str(path))
    assert str(cfg.distributed_type).endswith("DEEPSPEED") and str(cfg.mixed_precision) == "bf16"
    assert cfg.num_processes == 7 and cfg.deepspeed_config["zero_stage"] == 2
    assert cfg.deepspeed_config["gradient_clipping"] == 1.0
    assert "gradient_accumulation_steps" not in yaml.safe_load(path.read_text())["deepspeed_config"]   # "auto"
    cmd = train.launch_command(load_recipe("paper-opt-1.3b"), "paper-opt-1.3b", "pro", 4, 1500, 42)
    assert cmd[:6] == ["accelerate", "launch", "--config_file", str(path), "--num_processes", "7"]
    assert cmd[6:9] == ["-m", "divscale.cli", "train"] and "--ranking-len" in cmd
    assert train.launch_command(load_recipe("smoke"), "smoke", "sft", 2, 16, 42)[0] == sys.executable


@pytest.mark.slow
@pytest.mark.parametrize("name,algo", [("paper-opt-1.3b", "pro"), ("paper-llama-7b", "sft")])
def test_paper_code_path_with_a_tiny_model(name, algo, tmp_path, tiny_gpt, tiny_tokenizer):
    """The paper recipe as is (per-n batches, grad accumulation for 112 prompts/step, validation, best/),
    with tiny_gpt swapped in (256 positions: the recipe's 512-token block would be refused), one step, fp32 on CPU."""
    recipe = load_recipe(name, {"train.max_steps": 1, "train.bf16": False, "train.max_length": 256,
                                "train.max_prompt_length": 192})
    seen = RecordArgs()
    run_dir = train.train_run(recipe, algo, 4, len(RANKINGS), 42, grid={(4, len(RANKINGS)): RANKINGS},
                              policy=(tiny_gpt, tiny_tokenizer), rm_train=LengthRM(),
                              dev_prompts=[r["prompt"] for r in RANKINGS], runs_dir=tmp_path)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 1 and result["best_step"] == 1 and set(result["dev_rewards"]) == {"0", "1"}
    want = SPEC[name]["batch"][(algo, 4 if algo == "pro" else 2)]
    per_device, accum = want[0], want[1] * 7                   # one process here: 7x the accumulation
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["train"]["learning_rate"] == SPEC[name]["lr"] and cfg["policy"]["model"] == SPEC[name]["model"]
    rerun = train.train_run(recipe, algo, 4, len(RANKINGS), 42, grid={(4, len(RANKINGS)): RANKINGS},
                            policy=(tiny_gpt, tiny_tokenizer), rm_train=LengthRM(),
                            dev_prompts=[r["prompt"] for r in RANKINGS], runs_dir=tmp_path, callbacks=[seen])
    assert rerun == run_dir and not hasattr(seen, "args")       # done: skipped
    trainer = train.build_trainer(recipe, algo, 4, 42, tiny_gpt, tiny_tokenizer, RANKINGS, tmp_path / "t")
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (per_device, accum)
    assert trainer.args.learning_rate == SPEC[name]["lr"] and trainer.args.lr_scheduler_type.value == "constant"
    assert trainer.args.weight_decay == 0.01 and trainer.args.max_grad_norm == 1.0 and trainer.args.warmup_steps == 0


def test_run_cell_and_cli_wire_the_pipeline(tmp_path, tiny_gpt, tiny_tokenizer, monkeypatch, capsys):
    """``divscale train`` -> run_cell -> divscale.study.pipeline (stubbed here) -> load_policy (stubbed) -> train_run."""
    import divscale.models.tiny_gpt
    from divscale.study import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "policy_texts", lambda R: ["some text"])
    monkeypatch.setattr(pipeline, "reward_models", lambda R: (LengthRM(), LengthRM()))
    monkeypatch.setattr(pipeline, "grid", lambda R, draw=None: {(3, 4): RANKINGS})
    monkeypatch.setattr(pipeline, "dev_prompts", lambda R: [r["prompt"] for r in RANKINGS[:2]])
    monkeypatch.setattr(pipeline, "policy_fingerprint", lambda R: "tiny-gpt:stub")   # the stub's weights hash
    monkeypatch.setattr(divscale.models.tiny_gpt, "load_policy",
                        lambda cfg, texts, progress=False: calls.append(texts) or (tiny_gpt, tiny_tokenizer))
    argv = ["train", "--recipe", "smoke", "--algo", "pro", "--ranking-len", "3", "--prompts", "4", "--seed", "42",
            "--set", "train.max_steps=2", "--set", "train.learning_rate=5e-4", "--runs-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    assert run_dir.startswith(str(tmp_path / "train" / "pro-n3-k4-s42-"))
    assert json.loads((tmp_path / "train" / run_dir.split("/")[-1] / "result.json").read_text())["steps"] == 2
    cfg = json.loads((tmp_path / "train" / run_dir.split("/")[-1] / "config.json").read_text())
    assert cfg["train"]["learning_rate"] == 0.0005                   # '5e-4' (YAML: a string) read as a float
    assert not list((tmp_path / "train").glob("*.partial"))
    assert calls == [["some text"]]
    assert cli.main(argv) == 0 and calls == [["some text"]]      # completed: the policy is not even loaded
    assert capsys.readouterr().out.strip().splitlines()[-1] == run_dir
    bad = [("2" if a == "3" else a) for a in argv]                   # --ranking-len 2: not a cell of this grid
    assert cli.main(bad) == 1                                         # a one-line error, exit status 1
    assert "no grid cell" in capsys.readouterr().err


def test_python_m_divscale_cli_train_help():
    out = subprocess.run([sys.executable, "-m", "divscale.cli", "train", "--help"], capture_output=True, text=True, check=False,
                         cwd=paths.ROOT, timeout=120)
    assert out.returncode == 0 and "--ranking-len" in out.stdout and "--algo" in out.stdout


def test_policy_command_prints_and_writes_the_fingerprint(tmp_path, monkeypatch, capsys):
    from divscale.study import pipeline

    monkeypatch.setattr(pipeline, "policy_fingerprint", lambda R: f"tiny-gpt:{R.name}")
    out = tmp_path / "policy.txt"
    assert cli.main(["policy", "--recipe", "smoke", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == "tiny-gpt:smoke" and out.read_text() == "tiny-gpt:smoke\n"
