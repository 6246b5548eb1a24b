"""Training runs on tiny_gpt: SFT/PRO/DPO, best-on-dev selection, run directories, resume, determinism."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel, TrainerCallback

from divscale.config import Recipe
from divscale.io import DataError
from divscale.train import runs as train

QUESTIONS = ["How do I bake bread?", "What is the capital of France?", "Can you help me with my homework?",
             "Tell me a joke.", "How do I fix a flat tire?", "What should I cook tonight?",
             "Why is the sky blue?", "How do plants grow?"]
RANKINGS = [{"id": f"toy-{i}", "prompt": f"\n\nHuman: {q}\n\nAssistant:",
             "responses": ["I am happy to help you with that.", "Sure, let me think.", "No.", "bad bad bad"],
             "rewards": [2.0, 1.0, -0.5, -1.5]} for i, q in enumerate(QUESTIONS)]
DEV = [r["prompt"] for r in RANKINGS[:4]]


class LengthRM:
    """A stand-in RM_train: longer answers score higher (deterministic, depends on the text only)."""

    def score(self, prompts, responses, **kwargs):
        assert len(prompts) == len(responses)
        return np.array([len(r) / 10.0 - 1.0 for r in responses])


class ScriptedRM:
    """Returns a fixed dev reward per call (call i -> logits[i]) to script which step is best."""

    def __init__(self, logits):
        self.logits, self.calls = list(logits), 0

    def score(self, prompts, responses, **kwargs):
        value = self.logits[self.calls]
        self.calls += 1
        return np.full(len(responses), value)


class Snapshot(TrainerCallback):
    """Copies the weights at the end of every step (what the dev callback evaluates and checkpoints)."""

    def __init__(self):
        self.weights = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.named_parameters()}


class Kill(TrainerCallback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt(f"killed at step {self.at_step}")


class MustNotTrain(TrainerCallback):
    def on_train_begin(self, *args, **kwargs):
        raise AssertionError("a completed run must not train again")


def tiny_recipe(**train_overrides) -> Recipe:
    recipe = Recipe(name="tiny")
    settings = {"max_steps": 6, "prompts_per_step": 4, "per_device_train_batch_size": 4, "per_device_batch_by_n": {},
                "learning_rate": 3e-3, "eval_every": 3, "max_length": 128, "max_prompt_length": 96,
                "dev_max_new_tokens": 8, "dev_batch_size": 8}
    settings.update(train_overrides)
    for key, value in settings.items():
        setattr(recipe.train, key, value)
    return recipe


def run(recipe, tmp_path, tiny_gpt, tiny_tokenizer, algo="pro", n=3, seed=42, rm="length", sub="runs", **kw):
    rm = LengthRM() if rm == "length" else rm
    return train.train_run(recipe, algo, n, len(RANKINGS), seed, grid=RANKINGS, policy=(tiny_gpt, tiny_tokenizer),
                           rm_train=rm, dev_prompts=DEV if rm is not None else None, runs_dir=tmp_path / sub, **kw)


def losses(run_dir):
    return [r["loss"] for r in train.RunLog(run_dir).records() if "loss" in r]


def load_best(run_dir):
    return GPT2LMHeadModel.from_pretrained(run_dir / "best", use_safetensors=True)


@pytest.mark.parametrize("algo", ["sft", "pro", "dpo"])
def test_each_algorithm_trains(algo, tmp_path, tiny_gpt, tiny_tokenizer):
    recipe = tiny_recipe(max_steps=8, eval_every=8)
    before = {k: v.clone() for k, v in tiny_gpt.state_dict().items()}
    run_dir = run(recipe, tmp_path, tiny_gpt, tiny_tokenizer, algo=algo)
    curve = losses(run_dir)
    assert len(curve) == 8 and all(math.isfinite(x) for x in curve)
    assert np.mean(curve[-2:]) < curve[0]                         # a memorisable toy: the loss goes down
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 8 and result["selection"] == "dev" and result["best_step"] in (8,)
    assert set(result["dev_rewards"]) == {"0", "8"}
    assert all(torch.equal(before[k], v) for k, v in tiny_gpt.state_dict().items())   # the caller's policy untouched
    best = load_best(run_dir)
    assert not all(torch.equal(before[k], v) for k, v in best.state_dict().items() if k in before)
    assert (run_dir / "best" / "tokenizer.json").exists() and (run_dir / "config.json").exists()
    if algo == "pro":
        rec = next(r for r in train.RunLog(run_dir).records() if "loss" in r)
        assert rec["loss_total"] == pytest.approx(rec["loss_pro"] + 0.05 * 4 * rec["loss_sft"], rel=1e-5)
        assert rec["sft_scale"] == pytest.approx(0.2)
        assert {"loss_rank_1", "loss_rank_2"} <= set(rec)


def test_best_checkpoint_is_the_best_dev_step(tmp_path, tiny_gpt, tiny_tokenizer):
    # dev rewards by evaluation: step 0 (highest, but not selectable), 2, 4 (best), 6
    rm = ScriptedRM([5.0, -1.0, 2.0, 0.5])
    snap = Snapshot()
    run_dir = run(tiny_recipe(max_steps=6, eval_every=2), tmp_path, tiny_gpt, tiny_tokenizer, rm=rm, callbacks=[snap])
    result = json.loads((run_dir / "result.json").read_text())
    assert rm.calls == 4
    assert result["best_step"] == 4 and result["best_dev_reward"] == pytest.approx(1 / (1 + math.exp(-2.0)))
    dev = [r for r in train.RunLog(run_dir).records() if "dev_reward" in r]
    assert [(r["step"], r["selectable"]) for r in dev] == [(0, False), (2, True), (4, True), (6, True)]
    best = dict(load_best(run_dir).named_parameters())
    assert all(torch.equal(best[k], v) for k, v in snap.weights[4].items())
    assert not all(torch.equal(best[k], v) for k, v in snap.weights[6].items())


def test_without_validation_the_last_step_is_kept(tmp_path, tiny_gpt, tiny_tokenizer):
    snap = Snapshot()
    run_dir = run(tiny_recipe(max_steps=3), tmp_path, tiny_gpt, tiny_tokenizer, rm=None, callbacks=[snap])
    result = json.loads((run_dir / "result.json").read_text())
    assert result["selection"] == "last" and result["best_step"] == 3
    best = dict(load_best(run_dir).named_parameters())
    assert all(torch.equal(best[k], v) for k, v in snap.weights[3].items())


def test_run_dir_is_atomic_and_skipped_when_done(tmp_path, tiny_gpt, tiny_tokenizer):
    seen = {}

    class Look(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            folders = [p for p in (tmp_path / "runs" / "train").iterdir() if p.suffix != ".lock"]
            seen[state.global_step] = sorted(p.name.endswith(".partial") for p in folders)

    run_dir = run(tiny_recipe(max_steps=2, eval_every=2), tmp_path, tiny_gpt, tiny_tokenizer, callbacks=[Look()])
    assert seen == {1: [True], 2: [True]}                          # only the .partial folder while training
    assert sorted(p.name for p in run_dir.iterdir()) == ["DONE", "best", "config.json", "metrics.jsonl",
                                                         "result.json", "train.log"]
    assert not run_dir.with_name(run_dir.name + ".partial").exists()
    assert run_dir.with_name(run_dir.name + ".lock").exists()        # the lock two processes share (released)
    stamp = (run_dir / "result.json").stat().st_mtime_ns
    again = run(tiny_recipe(max_steps=2, eval_every=2), tmp_path, tiny_gpt, tiny_tokenizer, callbacks=[MustNotTrain()])
    assert again == run_dir and (run_dir / "result.json").stat().st_mtime_ns == stamp
    run_dir.rename(run_dir.with_name(run_dir.name + ".partial"))  # as if killed just before the final rename
    again = run(tiny_recipe(max_steps=2, eval_every=2), tmp_path, tiny_gpt, tiny_tokenizer, callbacks=[MustNotTrain()])
    assert again == run_dir and (run_dir / "DONE").exists() and (run_dir / "result.json").stat().st_mtime_ns == stamp


def test_kill_and_resume_gives_identical_weights(tmp_path, tiny_gpt, tiny_tokenizer):
    recipe = tiny_recipe(max_steps=8, eval_every=2)
    whole = run(recipe, tmp_path, tiny_gpt, tiny_tokenizer, sub="whole")
    with pytest.raises(KeyboardInterrupt):
        run(recipe, tmp_path, tiny_gpt, tiny_tokenizer, sub="killed", callbacks=[Kill(5)])
    (partial,) = [p for p in (tmp_path / "killed" / "train").iterdir() if p.suffix != ".lock"]
    assert partial.name.endswith(".partial")
    checkpoints = [p.name for p in (partial / "trainer").iterdir() if p.name.startswith("checkpoint")]
    assert max(checkpoints, key=lambda name: int(name.split("-")[1])) == "checkpoint-4"
    torn = partial / "trainer" / "checkpoint-6"                    # as if killed while writing a checkpoint
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")
    resumed = run(recipe, tmp_path, tiny_gpt, tiny_tokenizer, sub="killed")
    a, b = (json.loads((d / "result.json").read_text()) for d in (whole, resumed))
    assert b["resumed_from"] == "checkpoint-4" and a["resumed_from"] is None
    assert a["final_sha256"] == b["final_sha256"]                  # bit-identical final weights
    assert losses(whole) == losses(resumed) and len(losses(whole)) == 8
    assert a["dev_rewards"] == b["dev_rewards"] and a["best_step"] == b["best_step"]
    steps = [[(r["step"], "loss" in r) for r in train.RunLog(d).records()] for d in (whole, resumed)]
    assert steps[0] == steps[1]                                     # no record lost or repeated by the resume
    best_a, best_b = load_best(whole).state_dict(), load_best(resumed).state_dict()
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_same_seed_same_curve(tmp_path, tiny_gpt, tiny_tokenizer):
    recipe = tiny_recipe(max_steps=4, eval_every=4)
    first = run(recipe, tmp_path, tiny_gpt, tiny_tokenizer, sub="a")
    second = run(recipe, tmp_path, tiny_gpt, tiny_tokenizer, sub="b")
    other = run(recipe, tmp_path, tiny_gpt, tiny_tokenizer, sub="c", seed=43)
    assert losses(first) == losses(second)
    assert [r for r in train.RunLog(first).records() if "dev_reward" in r][-1]["dev_reward"] == \
        [r for r in train.RunLog(second).records() if "dev_reward" in r][-1]["dev_reward"]
    assert losses(first) != losses(other)                           # another seed: another data order


def test_run_hash_covers_what_matters(tmp_path, tiny_gpt, tiny_tokenizer):
    base = tiny_recipe()
    pid = train.policy_fingerprint(tiny_gpt, tiny_tokenizer)

    def name(recipe=base, rankings=RANKINGS, algo="pro", policy_id=pid, dev=DEV):
        cfg = train.run_config(recipe, algo, 3, 8, 42, [train.ranking_record(r) for r in rankings], dev,
                               policy_id, "LengthRM")
        return train.run_name(cfg)

    assert name().startswith("pro-n3-k8-s42-")
    lr = tiny_recipe(learning_rate=1e-4)
    seeds = tiny_recipe()
    seeds.train.seeds = [1]                                         # enumerates the grid: not part of a run
    renamed = tiny_recipe()
    renamed.name = "another-recipe"
    edited = [dict(RANKINGS[0], responses=["changed"] + RANKINGS[0]["responses"][1:])] + RANKINGS[1:]
    assert name(lr) != name() and name(rankings=edited) != name() and name(algo="sft") != name()
    assert name(policy_id="other") != name() and name(dev=DEV[:2]) != name()
    assert name(seeds) == name() and name(renamed) == name()


def test_bad_inputs_fail_before_training(tmp_path, tiny_gpt, tiny_tokenizer):
    recipe = tiny_recipe()
    with pytest.raises(DataError, match="toy-0.*needs 4"):
        train.train_run(recipe, "pro", 4, 8, 42, grid=[dict(r, responses=r["responses"][:3]) for r in RANKINGS],
                        policy=(tiny_gpt, tiny_tokenizer), runs_dir=tmp_path)
    no_rewards = [dict(r, rewards=None) for r in RANKINGS]
    with pytest.raises(DataError, match="no RM_train rewards"):
        train.train_run(recipe, "pro", 2, 8, 42, grid=no_rewards, policy=(tiny_gpt, tiny_tokenizer), runs_dir=tmp_path)
    unsorted = [dict(r, rewards=[0.0, 1.0, -0.5, -1.5]) for r in RANKINGS]
    with pytest.raises(DataError, match="not sorted best first"):
        train.train_run(recipe, "pro", 2, 8, 42, grid=unsorted, policy=(tiny_gpt, tiny_tokenizer), runs_dir=tmp_path)
    with pytest.raises(ValueError, match="holds 8 rankings, expected 5"):
        train.train_run(recipe, "sft", 2, 5, 42, grid=RANKINGS, policy=(tiny_gpt, tiny_tokenizer), runs_dir=tmp_path)
    with pytest.raises(ValueError, match="no grid cell"):
        train.train_run(recipe, "sft", 2, 8, 42, grid={(3, 8): RANKINGS}, policy=(tiny_gpt, tiny_tokenizer),
                        runs_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown algo"):
        train.train_run(recipe, "ppo", 2, 8, 42, grid=RANKINGS, policy=(tiny_gpt, tiny_tokenizer), runs_dir=tmp_path)
    with pytest.raises(ValueError, match="both rm_train and dev_prompts"):
        train.train_run(recipe, "sft", 2, 8, 42, grid=RANKINGS, policy=(tiny_gpt, tiny_tokenizer),
                        rm_train=LengthRM(), runs_dir=tmp_path)
    with pytest.raises(ValueError, match="not a multiple"):
        train.train_run(tiny_recipe(prompts_per_step=6), "sft", 2, 8, 42, grid=RANKINGS,
                        policy=(tiny_gpt, tiny_tokenizer), runs_dir=tmp_path)
    assert not (tmp_path / "train").exists()                       # nothing half-written
    # SFT and DPO do not need rewards; without rewards PRO runs with use_temperature off
    assert train.train_run(tiny_recipe(max_steps=1, use_temperature=False), "pro", 2, 8, 42, grid=no_rewards,
                           policy=(tiny_gpt, tiny_tokenizer), runs_dir=tmp_path).exists()


def test_batch_plan_and_pairs():
    cfg = tiny_recipe(prompts_per_step=112, per_device_train_batch_size=8, per_device_batch_by_n={4: 4}).train
    assert train.batch_plan(cfg, "pro", 2, world=7) == (8, 2)
    assert train.batch_plan(cfg, "pro", 4, world=7) == (4, 4)
    assert train.batch_plan(cfg, "sft", 4, world=7) == (8, 2)      # SFT puts one sequence per prompt through
    assert train.batch_plan(cfg, "dpo", 4, world=1) == (8, 14)
    with pytest.raises(ValueError, match="not a multiple"):
        train.batch_plan(cfg, "pro", 2, world=8)
    assert train.ranking_pairs(4) == [(0, 1), (0, 2), (0, 3)]
    assert train.ranking_pairs(4, "adjacent") == [(0, 1), (1, 2), (2, 3)]
    assert len(train.ranking_pairs(4, "all")) == 6
    with pytest.raises(ValueError, match="dpo_pairs"):
        train.ranking_pairs(3, "random")


TORCHRUN_SCRIPT = """
import json, os, sys
import numpy as np, torch
from transformers import AutoTokenizer, GPT2LMHeadModel
from divscale.train import runs as train
from divscale.config import Recipe

torch.set_num_threads(1)
folder, runs, rankings = sys.argv[1], sys.argv[2], json.loads(open(sys.argv[3]).read())
model, tok = GPT2LMHeadModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)

class LengthRM:
    def score(self, prompts, responses, **kwargs):
        return np.array([len(r) / 10.0 - 1.0 for r in responses])

recipe = Recipe(name="ddp")
for key, value in dict(max_steps=4, prompts_per_step=4, per_device_train_batch_size=2, per_device_batch_by_n={},
                       learning_rate=3e-3, eval_every=2, max_length=128, max_prompt_length=96,
                       dev_max_new_tokens=8).items():
    setattr(recipe.train, key, value)
run = train.train_run(recipe, "pro", 3, len(rankings), 42, grid=rankings, policy=(model, tok), rm_train=LengthRM(),
                      dev_prompts=[r["prompt"] for r in rankings[:4]], runs_dir=runs)
sys.stdout.write(f"RUN {os.environ['RANK']} {os.environ['WORLD_SIZE']} {run}\\n"); sys.stdout.flush()  # one write: atomic on a pipe
"""


@pytest.mark.slow
def test_two_processes_under_torchrun(tmp_path, tiny_gpt, tiny_tokenizer):
    """The distributed path: main-only writes, barriers, the dev reward broadcast to every process."""
    import os
    import subprocess
    import sys

    tiny_gpt.save_pretrained(tmp_path / "policy")
    tiny_tokenizer.save_pretrained(tmp_path / "policy")
    (tmp_path / "rankings.json").write_text(json.dumps(RANKINGS))
    (tmp_path / "script.py").write_text(TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          str(tmp_path / "script.py"), str(tmp_path / "policy"), str(tmp_path / "runs"),
                          str(tmp_path / "rankings.json")], capture_output=True, text=True, env=env, timeout=600,
                         check=False)
    lines = sorted(line for line in out.stdout.splitlines() if line.startswith("RUN"))
    assert out.returncode == 0 and len(lines) == 2, out.stderr[-3000:]
    run_dir = Path(lines[0].split()[-1])
    assert [line.split()[1:] for line in lines] == [["0", "2", str(run_dir)], ["1", "2", str(run_dir)]]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 4 and result["best_step"] in (2, 4) and set(result["dev_rewards"]) == {"0", "2", "4"}
    assert len([r for r in train.RunLog(run_dir).records() if "dev_reward" in r]) == 3     # written once
    assert [p.name for p in (tmp_path / "runs" / "train").iterdir() if p.suffix != ".lock"] == [run_dir.name]


# --------------------------------------------------------------------------- the recipe -> TrainingArguments

def test_training_arguments_come_from_the_recipe(tmp_path):
    """One function maps a cell's recipe to its TrainingArguments: SFT/PRO (the paper's summed NLL, constant LR,
    the model's own dropout, lengths from the recipe or the policy's positions) and DPO (TRL's DPOConfig)."""
    from trl import DPOConfig

    from divscale.train.trainer import RankingConfig

    recipe = tiny_recipe(prompts_per_step=8, per_device_train_batch_size=2, learning_rate=3e-4, beta=0.2,
                         dpo_learning_rate=1e-5, sft_weight=0.1, max_length=None, max_prompt_length=None, bf16=False)
    pro = train.training_arguments(recipe, "pro", 3, 7, tmp_path, positions=256, run_name="cell")
    assert isinstance(pro, RankingConfig)
    assert (pro.loss_type, pro.sft_weight, pro.use_temperature, pro.sft_reduction) == (["pro"], 0.1, True,
                                                                                       "sequence_sum")
    assert (pro.per_device_train_batch_size, pro.gradient_accumulation_steps, pro.learning_rate) == (2, 4, 3e-4)
    assert (pro.max_length, pro.max_prompt_length) == (256, 192)               # the policy's 256 positions
    assert (pro.seed, pro.data_seed, pro.max_steps, pro.save_steps, pro.run_name) == (7, 7, 6, 3, "cell")
    assert pro.disable_dropout is False and pro.lr_scheduler_type.value == "constant" and pro.warmup_steps == 0
    assert pro.logging_nan_inf_filter is False and pro.weight_decay == 0.01 and pro.max_grad_norm == 1.0
    sft = train.training_arguments(recipe, "sft", 3, 7, tmp_path, positions=256)
    assert (sft.loss_type, sft.use_temperature, sft.per_device_train_batch_size) == (["sft"], False, 2)
    dpo = train.training_arguments(recipe, "dpo", 3, 7, tmp_path, positions=256)
    assert isinstance(dpo, DPOConfig) and (dpo.beta, dpo.learning_rate, dpo.max_length) == (0.2, 1e-5, 256)
    with pytest.raises(ValueError, match="max_length=512 exceeds the 256 positions"):
        train.training_arguments(tiny_recipe(max_length=512), "pro", 3, 7, tmp_path, positions=256)


# --------------------------------------------------------------------------- a diverged run stops

def test_a_diverged_cell_stops_and_is_never_complete(tmp_path, tiny_gpt, tiny_tokenizer):
    from divscale.train.trainer import TrainingDiverged

    class BlowUp(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    for p in model.parameters():
                        p.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"run pro-n3-k8-s42-\w+: the loss is nan at step 4"):
        run(tiny_recipe(max_steps=6, eval_every=6), tmp_path, tiny_gpt, tiny_tokenizer, rm=None, callbacks=[BlowUp()])
    (folder,) = [p for p in (tmp_path / "runs" / "train").iterdir() if p.suffix != ".lock"]
    assert folder.name.endswith(".partial")                      # never renamed to a finished run
    assert not any((folder / name).exists() for name in ("DONE", "result.json", "best"))
    losses_seen = [r["loss"] for r in train.RunLog(folder).records() if "loss" in r]
    assert len(losses_seen) == 3 and all(math.isfinite(x) for x in losses_seen)   # no NaN record logged as a loss


def test_dev_validation_loads_rm_train_on_the_main_process_only(tmp_path, tiny_gpt, tiny_tokenizer, monkeypatch):
    """Under accelerate launch only the main process answers the dev prompts and scores them: the other ranks wait
    for its verdict (broadcast) and never load RM_train's weights onto their GPUs."""
    from types import SimpleNamespace

    import accelerate.utils

    from divscale.reward import rm as reward
    from divscale.tools.gpu_check import _tiny_oa_rm

    rm = reward.OpenAssistantRM(_tiny_oa_rm(tiny_tokenizer, tmp_path / "rm", 1))
    callback = train.DevRewardCallback(tiny_tokenizer, DEV, rm, every=2, log=train.RunLog(tmp_path, enabled=False),
                                       max_new_tokens=4)
    args = SimpleNamespace(world_size=2)

    def state(main):
        return SimpleNamespace(is_world_process_zero=main, global_step=2, max_steps=4, best_metric=None,
                               best_global_step=None)

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objs: [0.25])     # the main rank's verdict
    other = state(False)
    callback.on_step_end(args, other, SimpleNamespace(should_save=False), model=tiny_gpt)
    assert other.best_metric == 0.25 and not rm.loaded
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objs: list(objs))
    main = state(True)
    callback.on_step_end(args, main, SimpleNamespace(should_save=False), model=tiny_gpt)
    assert rm.loaded and 0 < main.best_metric < 1


def test_an_fp16_policy_is_refused_before_the_run_folder(tmp_path, tiny_gpt, tiny_tokenizer):
    with pytest.raises(ValueError, match="float16.*load the policy in float32"):
        run(tiny_recipe(max_steps=2), tmp_path, tiny_gpt.half(), tiny_tokenizer, rm=None)
    assert not any(p.name.endswith(".partial") and (p / "DONE").exists()
                   for p in (tmp_path / "runs" / "train").iterdir())


# --------------------------------------------------------------------------- a run's initial policy

def test_load_initial_policy_of_a_cell(tmp_path, monkeypatch, hh_dir):
    """A cell's config.json rebuilds its tiny-gpt (same weights hash) without the pipeline."""
    from divscale.config import load_recipe
    from divscale.provenance import weights_sha256
    from divscale.train.runs import load_initial_policy, study_policy

    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe("smoke", {"policy.warmup_steps": 2, "data.pool_size": 40, "data.dev_size": 4,
                                   "data.test_size": 8, "data.sizes": [8], "train.max_steps": 1,
                                   "grid.primary.budget": None})
    (model, tokenizer), policy_id = study_policy(recipe)
    cell = [dict(r, id=f"c{i}") for i, r in enumerate(RANKINGS)]
    run_dir = train.train_run(recipe, "sft", 2, 8, 42, grid=cell, policy=(model, tokenizer), policy_id=policy_id,
                              runs_dir=tmp_path / "runs")
    again, tok = load_initial_policy(run_dir)
    assert weights_sha256(again) == weights_sha256(model) and len(tok) == len(tokenizer)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["kind"] == "cell" and config["inputs"]["policy"] == policy_id
    saved = json.loads((run_dir / "best" / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == recipe.policy.block_size              # not 10^30
