"""`divscale train --data`: anyone's ranked rows through RankingTrainer (every loss, frozen reference, ragged rows),
the own-data run folder (the contract `divscale evaluate --run` reads), the CLI's TRL-named flags, deprecated names,
and its refusals (flags that do not apply, bad step counts, lengths the model cannot hold)."""
from __future__ import annotations

import itertools
import json
import math
import warnings

import datasets
import pytest
import torch

from divscale import cli
from divscale.data.formats import normalize_ranked
from divscale.provenance import weights_sha256
from divscale.train.runs import load_initial_policy, train_ranked
from divscale.train.trainer import ListwiseConfig, RankingCollator, RankingConfig, RankingTrainer

ROWS = [{"id": "a", "prompt": "\n\nHuman: What is a cat?\n\nAssistant:",
         "completions": ["A small animal.", "A dog.", "No."], "ranks": [0, 1, 2]},
        {"id": "b", "prompt": "\n\nHuman: Say hi.\n\nAssistant:", "completions": ["Hi!", "Bye."], "ranks": [0, 1]},
        {"id": "c", "prompt": "\n\nHuman: Name a color.\n\nAssistant:",
         "completions": ["Red.", "Blue.", "Seven."], "scores": [1.0, 1.0, -1.0]},      # a tie at the top
        {"id": "d", "prompt": "\n\nHuman: Count to two.\n\nAssistant:",
         "completions": ["One, two.", "Two.", "Three.", "No."], "ranks": [0, 1, 2, 3]}]
MORE = [{"id": f"x{i}", "prompt": f"\n\nHuman: Question {i}?\n\nAssistant:",
         "completions": [f"Answer {i} is good.", f"Bad {i}."], "ranks": [0, 1]} for i in range(8)]


@pytest.fixture()
def ranked():
    return normalize_ranked(ROWS)


def _trainer(model, tok, data, loss, tmp_path, **kw):
    kw.setdefault("loss_type", loss)
    args = RankingConfig(output_dir=str(tmp_path / loss), max_steps=2, per_device_train_batch_size=4,
                         learning_rate=1e-3, use_cpu=True, report_to="none", save_strategy="no", max_length=128, **kw)
    return RankingTrainer(model=model, args=args, train_dataset=data, processing_class=tok)


def test_collator_pads_ranks_and_presence(tiny_tokenizer, ranked):
    batch = RankingCollator(tiny_tokenizer, 128, 96)([ranked[1], ranked[3]])
    assert batch["ranks"].tolist() == [[0, 1, -1, -1], [0, 1, 2, 3]]
    assert batch["present"].tolist() == [[True, True, False, False], [True] * 4]
    assert batch["completion_mask"][0, 2:].sum() == 0 and math.isnan(batch["scores"][1, 0])
    sft = RankingCollator(tiny_tokenizer, 128, 96, best_only=True)([ranked[1], ranked[3]])
    assert sft["completion_ids"].shape[1] == 1 and sft["ranks"].tolist() == [[0], [0]]


def test_plackett_luce_first_step_and_frozen_reference(tiny_gpt, tiny_tokenizer, ranked, tmp_path):
    trainer = _trainer(tiny_gpt, tiny_tokenizer, ranked, "plackett_luce", tmp_path)
    ref_before = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    pol_before = {k: v.clone() for k, v in tiny_gpt.state_dict().items()}
    batch = trainer.data_collator([ranked[i] for i in range(4)])
    # policy == reference: z = 0, every softmax term is log(size of its set)
    # rows: [0,1,2] -> log3 + log2; [0,1] -> log2; [0,0,1] -> log2 + log2; [0,1,2,3] -> log4 + log3 + log2
    want = (math.log(3) + math.log(2) + math.log(2) + 2 * math.log(2) + math.log(24)) / 4
    assert trainer.compute_loss(tiny_gpt, batch).item() == pytest.approx(want, abs=1e-5)
    trainer.train()
    assert all(torch.equal(v, trainer.ref_model.state_dict()[k]) for k, v in ref_before.items())
    assert any(not torch.equal(v, tiny_gpt.state_dict()[k]) for k, v in pol_before.items())
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())


@pytest.mark.parametrize("loss", ["pro", "all_pairs_dpo", "lipo_lambda", "sft", ("plackett_luce", "sft")])
def test_each_loss_trains(tiny_gpt, tiny_tokenizer, ranked, tmp_path, loss):
    loss = list(loss) if isinstance(loss, tuple) else loss
    trainer = _trainer(tiny_gpt, tiny_tokenizer, ranked, "+".join(loss) if isinstance(loss, list) else loss, tmp_path,
                       **({"loss_type": loss, "loss_weights": [1.0, 0.1]} if isinstance(loss, list) else {}))
    batch = trainer.data_collator([ranked[i] for i in range(4)])
    if loss == "all_pairs_dpo":                 # z = 0 at the start: every pair costs log 2
        assert trainer.compute_loss(tiny_gpt, batch).item() == pytest.approx(math.log(2), abs=1e-6)
    out = trainer.train()
    assert math.isfinite(out.training_loss)
    assert (trainer.ref_model is None) == (loss in ("pro", "sft"))
    logged = next(r for r in trainer.state.log_history if "loss" in r)
    for name in (loss if isinstance(loss, list) else [loss]):
        assert f"loss_{name}" in logged


def test_trainer_takes_raw_ranked_rows(tiny_gpt, tiny_tokenizer, tmp_path):
    raw = datasets.Dataset.from_list([{"prompt": "\n\nHuman: Hi\n\nAssistant:", "completions": ["b", "a", "c"],
                                       "scores": [0.5, 2.0, -1.0]}])
    trainer = _trainer(tiny_gpt, tiny_tokenizer, raw, "plackett_luce", tmp_path)
    row = trainer.train_dataset[0]
    assert row["completions"] == ["a", "b", "c"] and row["ranks"] == [0, 1, 2]


def test_options_are_checked_and_old_names_still_work(tmp_path, tiny_gpt, tiny_tokenizer, ranked):
    with pytest.raises(ValueError, match="choose one or more of"):
        RankingConfig(output_dir=str(tmp_path), loss_type="listnet")
    with pytest.raises(ValueError, match="max_steps=0"):
        RankingConfig(output_dir=str(tmp_path), max_steps=0)
    with pytest.raises(ValueError, match="loss_weights has 1 value"):
        RankingConfig(output_dir=str(tmp_path), loss_type=["pro", "sft"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="use_temperature applies to the pro loss only"):
        RankingConfig(output_dir=str(tmp_path), loss_type="plackett_luce", use_temperature=True)
    with pytest.warns(FutureWarning, match="'ListwiseConfig' is deprecated"):
        old = ListwiseConfig(output_dir=str(tmp_path), loss="all_pairs_dpo", max_prompt_length=96,
                             max_completion_length=32, sft_weight=0.5)
    assert (old.loss_type, old.loss_weights, old.max_length, old.sft_reduction) == (
        ["all_pairs_dpo", "sft"], [1.0, 0.5], 128, "sequence_sum")           # the old anchor, as a mixture
    with pytest.raises(DataErrorType, match="use_temperature needs a finite score.*'a'"):
        _trainer(tiny_gpt, tiny_tokenizer, ranked, "pro", tmp_path, use_temperature=True)


DataErrorType = __import__("divscale.io", fromlist=["DataError"]).DataError


def test_train_ranked_writes_the_contract(tiny_gpt, tiny_tokenizer, ranked, tmp_path):
    tok = tiny_tokenizer
    tok.chat_template = None
    run = train_ranked(ranked, "pro", (tiny_gpt, tok), "tiny", runs_dir=tmp_path, data_name="x.jsonl", max_steps=1,
                       per_device_train_batch_size=4, model_name="some/folder", split="train", limit=None,
                       held_out_ids=["z1", "z2"])
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "ranked" and config["seed"] == 42
    assert config["data"] | {"rows_sha256": None} == {"source": "x.jsonl", "split": "train", "limit": None,
                                                      "held_out_ids": ["z1", "z2"], "n_train": 4, "rows_sha256": None}
    assert config["model"] == {"name": "some/folder", "recipe": None, "policy_id": "tiny"}
    train = config["train"]
    assert train["loss_type"] == ["pro"] and train["learning_rate"] == 5e-5 and train["max_steps"] == 1
    assert (train["max_length"], train["max_prompt_length"]) == (256, 192)    # from the model's 256 positions
    assert {"beta", "truncation_mode", "precompute_ref_log_probs", "disable_dropout", "bf16"} <= set(train)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "loss_pro" in records[0] and "loss_sft" in records[0]
    result = json.loads((run / "result.json").read_text())
    assert result["loss_type"] == ["pro"] and result["n_rows"] == 4 and result["finished"]
    saved = json.loads((run / "best" / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 256                                   # the model's positions, not 10^30


def test_a_chat_template_survives_into_best(tiny_gpt, tiny_tokenizer, ranked, tmp_path):
    from transformers import AutoTokenizer

    tok = tiny_tokenizer
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
                        "{% if add_generation_prompt %}assistant:{% endif %}"
    run = train_ranked(ranked, "sft", (tiny_gpt, tok), "tiny", runs_dir=tmp_path, max_steps=1)
    saved = AutoTokenizer.from_pretrained(run / "best")
    assert saved.chat_template == tok.chat_template and saved.model_max_length == 256
    tok.chat_template = None


# --------------------------------------------------------------------------- the command line

@pytest.fixture()
def model_dir(tiny_gpt, tiny_tokenizer, tmp_path):
    folder = tmp_path / "policy"
    tiny_gpt.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS + MORE))
    return path


def test_cli_run_folder_trl_flags_and_reuse(model_dir, data_file, tmp_path, capsys):
    argv = ["train", "--data", str(data_file), "--loss_type", "plackett_luce", "--model", str(model_dir),
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--held_out", "2", "--max-length", "96",
            "--runs-dir", str(tmp_path / "runs")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "10 rows (2 held out for evaluation), 2 steps of 2 rows" in out and "max_length 96" in out
    (run,) = list((tmp_path / "runs" / "train").glob("plackett_luce-mine-s42-*[!k]"))
    for name in ("config.json", "metrics.jsonl", "train.log", "result.json", "DONE", "best/model.safetensors",
                 "best/tokenizer.json"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert len(config["data"]["held_out_ids"]) == 2 and config["data"]["n_train"] == 10
    assert config["model"]["name"] == str(model_dir) and config["train"]["max_length"] == 96
    initial, _ = load_initial_policy(run)
    from transformers import AutoModelForCausalLM
    assert weights_sha256(initial) == weights_sha256(AutoModelForCausalLM.from_pretrained(model_dir))
    mtime = (run / "DONE").stat().st_mtime
    assert cli.main(argv) == 0 and (run / "DONE").stat().st_mtime == mtime        # complete: not redone ...
    out = capsys.readouterr().out
    assert "reused the finished run" in out and "nothing was trained now" in out
    assert "plackett_luce: 2 steps" not in out                                  # the old timing is not reprinted
    assert cli.main([*argv, "--seed", "7"]) == 0                                  # ... another seed is another run
    assert len(list((tmp_path / "runs" / "train").glob("*[!k]"))) == 2


def test_cli_old_flags_still_work_with_a_warning(model_dir, data_file, tmp_path, capsys):
    argv = ["train", "--data", str(data_file), "--loss", "all_pairs_dpo", "--model", str(model_dir), "--steps", "1",
            "--batch-size", "2", "--lr", "1e-4", "--max-prompt-length", "64", "--max-completion-length", "32",
            "--no-share-prompt", "--runs-dir", str(tmp_path / "runs")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(argv) == 0
    said = " ".join(str(w.message) for w in caught if issubclass(w.category, FutureWarning))
    for old in ("'--steps'", "'--batch-size'", "'--lr'", "'--loss'", "'max_completion_length'"):
        assert old in said, old
    (run,) = list((tmp_path / "runs" / "train").glob("all_pairs_dpo-*[!k]"))
    train = json.loads((run / "config.json").read_text())["train"]
    assert (train["max_steps"], train["per_device_train_batch_size"], train["learning_rate"]) == (1, 2, 1e-4)
    assert (train["max_length"], train["max_prompt_length"], train["share_prompt"]) == (96, 64, False)


@pytest.mark.parametrize("extra,message", [
    (["--algo", "pro"], "--algo is a grid-cell flag and does not apply to --data"),
    (["--ranking-len", "2"], "--ranking-len is a grid-cell flag"),
    (["--set", "policy.warmup_steps=10"], "--set policy.warmup_steps=10 changes a recipe value, which does not apply"),
    (["--recipe", "smoke"], "--recipe picks the tiny-gpt policy of a recipe; it does not apply to --model"),
    (["--max_steps", "0"], "max_steps=0: give a number of optimizer steps >= 1, or -1"),
    (["--steps", "-5"], "max_steps=-5"),
    (["--max_length", "1024"], "max_length=1024 exceeds the 256 positions"),
    (["--loss_type", "plackett_luce", "--use_temperature"], "use_temperature applies to the pro loss only"),
])
def test_cli_refuses_what_does_not_apply_before_any_work(model_dir, data_file, tmp_path, capsys, extra, message):
    argv = ["train", "--data", str(data_file), "--model", str(model_dir), "--runs-dir", str(tmp_path / "runs"), *extra]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()                                     # nothing was started


def test_cli_grid_form_refuses_data_flags_and_names_what_is_missing(capsys):
    assert cli.main(["train", "--recipe", "smoke", "--algo", "pro", "--ranking-len", "2", "--prompts", "24",
                     "--seed", "42", "--learning_rate", "1e-3"]) == 1
    assert "--learning_rate applies to --data runs only" in capsys.readouterr().err
    assert cli.main(["train", "--recipe", "smoke"]) == 1
    assert "--algo" in capsys.readouterr().err


def test_cli_data_errors_name_the_row(tmp_path, capsys, model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completions": ["a"], "ranks": [0]}) + "\n")
    assert cli.main(["train", "--data", str(bad), "--fail_on_unrankable", "--model", str(model_dir)]) == 1
    assert "bad.jsonl:1: 1 completion(s)" in capsys.readouterr().err
    with pytest.warns(FutureWarning, match="--keep-unrankable"):
        assert cli.main(["train", "--data", str(bad), "--keep-unrankable", "--model", str(model_dir)]) == 1
    assert "bad.jsonl:1: 1 completion(s)" in capsys.readouterr().err


def test_tiny_gpt_is_the_studys_cached_policy_for_every_data_file(tmp_path, monkeypatch, data_file, capsys, hh_dir):
    """`--model tiny-gpt` trains the study's warmed-up policy of --recipe: a second data file warms nothing up."""
    from divscale.models import tiny_gpt

    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "small.yaml"
    recipe.write_text("data: {pool_size: 40, dev_size: 4, test_size: 8, sizes: [8]}\n"
                      "policy: {n_layer: 1, n_head: 2, n_embd: 32, vocab_size: 300, block_size: 128, warmup_steps: 2}\n")
    built = []
    real = tiny_gpt.warm_up
    monkeypatch.setattr(tiny_gpt, "warm_up", lambda *a, **k: built.append(1) or real(*a, **k))
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in MORE))
    for data in (data_file, other):
        argv = ["train", "--data", str(data), "--recipe", str(recipe), "--max_steps", "1", "--held_out", "0",
                "--runs-dir", str(tmp_path / "runs")]
        assert cli.main(argv) == 0
    assert built == [1]                                                          # warmed up once, for both files
    configs = [json.loads((p / "config.json").read_text()) for p in (tmp_path / "runs" / "train").glob("*[!k]")]
    assert len(configs) == 2 and {c["model"]["policy_id"] for c in configs} == {configs[0]["model"]["policy_id"]}
    assert all(c["model"]["name"] == "tiny-gpt" and c["model"]["recipe"] == str(recipe) for c in configs)
    assert configs[0]["train"]["max_length"] == 128 and configs[0]["train"]["max_prompt_length"] == 96
    run = next((tmp_path / "runs" / "train").glob("*[!k]"))
    model, _ = load_initial_policy(run)
    assert configs[0]["model"]["policy_id"].startswith("tiny-gpt:") and model.config.n_positions == 128


def _colon_then_line_break(tokenizer, rows) -> int:
    """Token pairs (ends with ':', starts with a line break) among the completion tokens the trainer scores."""
    batch = RankingCollator(tokenizer, 192, 128)(list(rows))
    pairs = 0
    for ids, mask in zip(batch["completion_ids"].flatten(0, 1), batch["completion_mask"].flatten(0, 1)):
        pieces = [tokenizer.decode([t]) for t in ids[mask.bool()].tolist()]
        pairs += sum(a.endswith(":") and b.startswith("\n") for a, b in itertools.pairwise(pieces))
    return pairs


def test_one_line_rows_never_teach_a_line_break_after_a_colon(tiny_tokenizer):
    """09_listwise's empty answers: every generation prompt ends with the colon of "Assistant:"; markdown
    replies ("steps:\\n1. ...") train an HH-only policy to follow a colon with a line break, so it answers
    with line breaks only. The one-line form (what 09 trains on) has no such token pair."""
    from divscale.data.formats import one_line_ranked
    from divscale.models.generation import format_prompt

    rows = normalize_ranked([{"prompt": [{"role": "user", "content": "How do I fix runny mayonnaise?"}],
                              "completions": ["Try this:\n\n1. Add a yolk.\n2. Whisk:\nslowly.", "Throw it out."],
                              "ranks": [0, 1]}])
    gen_prompt = tiny_tokenizer(format_prompt(rows[0]["prompt"], tiny_tokenizer))["input_ids"]
    assert tiny_tokenizer.decode(gen_prompt[-1:]).endswith(":")       # what the first answer token follows
    assert _colon_then_line_break(tiny_tokenizer, rows) > 0
    assert _colon_then_line_break(tiny_tokenizer, one_line_ranked(rows)) == 0
    assert _colon_then_line_break(tiny_tokenizer, normalize_ranked(ROWS)) == 0
