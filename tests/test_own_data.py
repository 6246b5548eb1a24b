"""divscale.train.trainer: log-probs, ListwiseTrainer (each loss, frozen reference), run directories and
`divscale train --data`."""
from __future__ import annotations

import json
import math

import datasets
import pytest
import torch

from divscale import cli
from divscale.data.formats import normalize_ranked
from divscale.train.trainer import (
    ListwiseCollator,
    ListwiseConfig,
    ListwiseTrainer,
    completion_logprobs,
    naive_completion_logprobs,
    train_ranked,
)

ROWS = [{"id": "a", "prompt": "\n\nHuman: What is a cat?\n\nAssistant:",
         "completions": ["A small animal.", "A dog.", "No."], "ranks": [0, 1, 2]},
        {"id": "b", "prompt": "\n\nHuman: Say hi.\n\nAssistant:", "completions": ["Hi!", "Bye."], "ranks": [0, 1]},
        {"id": "c", "prompt": "\n\nHuman: Name a color.\n\nAssistant:",
         "completions": ["Red.", "Blue.", "Seven."], "scores": [1.0, 1.0, -1.0]},      # a tie at the top
        {"id": "d", "prompt": "\n\nHuman: Count to two.\n\nAssistant:",
         "completions": ["One, two.", "Two.", "Three.", "No."], "ranks": [0, 1, 2, 3]}]


@pytest.fixture()
def ranked():
    return normalize_ranked(ROWS)


def test_naive_logprobs_match_a_hand_forward(tiny_gpt, tiny_tokenizer):
    tok = tiny_tokenizer
    tiny_gpt.eval()                                           # no dropout
    logps, counts = naive_completion_logprobs(tiny_gpt, tok, ["Hello there"], [[" a b", " c"]])
    ids = tok("Hello there", add_special_tokens=False)["input_ids"]
    bos = [tok.bos_token_id] if tok("x")["input_ids"][0] == tok.bos_token_id and \
        len(tok("x")["input_ids"]) > len(tok("x", add_special_tokens=False)["input_ids"]) else []
    for j, comp in enumerate([" a b", " c"]):
        c = tok(comp, add_special_tokens=False)["input_ids"]
        seq = torch.tensor([bos + ids + c])
        with torch.no_grad():
            lp = torch.log_softmax(tiny_gpt(seq).logits[0, :-1], -1)
        start = len(bos + ids)
        want = sum(lp[start - 1 + t, c[t]].item() for t in range(len(c)))
        assert logps[0, j].item() == pytest.approx(want, abs=1e-4)
        assert counts[0, j].item() == len(c)


def test_ragged_rows_score_zero_where_missing(tiny_gpt, tiny_tokenizer):
    tiny_gpt.eval()
    logps, counts = completion_logprobs(tiny_gpt, tiny_tokenizer, ["p one", "p two"], [[" x", " y", " z"], [" x"]],
                                        share_prompt=False)
    assert logps.shape == (2, 3) and counts[1, 1:].tolist() == [0, 0] and logps[1, 1:].abs().sum() == 0
    full, _ = completion_logprobs(tiny_gpt, tiny_tokenizer, ["p two"], [[" x", " y"]], share_prompt=False)
    assert logps[1, 0].item() == pytest.approx(full[0, 0].item(), abs=1e-5)


def test_collator_pads_ranks_and_mask(tiny_tokenizer, ranked):
    batch = ListwiseCollator(tiny_tokenizer, "plackett_luce")([ranked[1], ranked[3]])
    assert batch["ranks"].tolist() == [[0, 1, -1, -1], [0, 1, 2, 3]]
    assert batch["completion_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert batch["completions"][0] == [" Hi!", " Bye."]
    sft = ListwiseCollator(tiny_tokenizer, "sft")([ranked[1], ranked[3]])
    assert sft["completions"] == [[" Hi!"], [" One, two."]]


def _trainer(tiny_gpt, tok, data, loss, tmp_path, **kw):
    args = ListwiseConfig(output_dir=str(tmp_path / loss), loss=loss, max_steps=2, per_device_train_batch_size=4,
                          learning_rate=1e-2, use_cpu=True, save_strategy="no", logging_steps=1, seed=0,
                          disable_tqdm=True, **kw)
    return ListwiseTrainer(model=tiny_gpt, args=args, train_dataset=data, processing_class=tok)


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


@pytest.mark.parametrize("loss", ["pro", "all_pairs_dpo", "sft"])
def test_each_loss_trains(tiny_gpt, tiny_tokenizer, ranked, tmp_path, loss):
    trainer = _trainer(tiny_gpt, tiny_tokenizer, ranked, loss, tmp_path)
    batch = trainer.data_collator([ranked[i] for i in range(4)])
    if loss == "all_pairs_dpo":                 # z = 0 at the start: every pair costs log 2
        assert trainer.compute_loss(tiny_gpt, batch).item() == pytest.approx(math.log(2), abs=1e-6)
    out = trainer.train()
    assert math.isfinite(out.training_loss)
    assert (trainer.ref_model is None) == (loss in ("pro", "sft"))
    assert trainer.args.sft_weight == (0.05 if loss == "pro" else 0.0)


@pytest.mark.parametrize("loss", ["pro"])     # K up to 4: the shared path (SFT has K = 1, DPO-style z = 0 at start)
def test_shared_prompt_gives_the_naive_loss(tiny_gpt, tiny_tokenizer, ranked, tmp_path, loss):
    values = []
    for share in (True, False):
        trainer = _trainer(tiny_gpt, tiny_tokenizer, ranked, loss, tmp_path, share_prompt=share)
        batch = trainer.data_collator([ranked[i] for i in range(4)])
        values.append(trainer.compute_loss(tiny_gpt, batch).item())
    assert values[0] == pytest.approx(values[1], abs=1e-5)


def test_trainer_takes_raw_ranked_rows(tiny_gpt, tiny_tokenizer, tmp_path):
    raw = datasets.Dataset.from_list([{"prompt": "\n\nHuman: Hi\n\nAssistant:", "completions": ["b", "a", "c"],
                                       "scores": [0.5, 2.0, -1.0]}])
    trainer = _trainer(tiny_gpt, tiny_tokenizer, raw, "plackett_luce", tmp_path)
    row = trainer.train_dataset[0]
    assert row["completions"] == ["a", "b", "c"] and row["ranks"] == [0, 1, 2]


def test_config_rejects_unknown_loss(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        ListwiseConfig(output_dir=str(tmp_path), loss="listnet")


def test_run_directory_and_cli(tiny_gpt, tiny_tokenizer, ranked, tmp_path):
    model_dir = tmp_path / "policy"
    tiny_gpt.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    argv = ["train", "--data", str(data), "--loss", "plackett_luce", "--model", str(model_dir), "--steps", "2",
            "--batch-size", "2", "--runs-dir", str(tmp_path / "runs")]
    assert cli.main(argv) == 0
    (run,) = list((tmp_path / "runs" / "train").iterdir())
    assert run.name.startswith("plackett_luce-mine-s42-") and not run.name.endswith(".partial")
    for name in ("config.json", "metrics.jsonl", "train.log", "result.json", "DONE", "best/model.safetensors",
                 "best/tokenizer.json"):
        assert (run / name).exists(), name
    assert not list((run / "best").glob("*.bin")) and not (run.parent / (run.name + ".partial")).exists()
    result = json.loads((run / "result.json").read_text())
    assert result["steps"] == 2 and result["n_rows"] == 4
    mtime = (run / "DONE").stat().st_mtime
    assert cli.main(argv) == 0 and (run / "DONE").stat().st_mtime == mtime        # complete: not redone
    assert cli.main(argv[:-2] + ["--runs-dir", str(tmp_path / "runs"), "--seed", "7"]) == 0
    assert len(list((tmp_path / "runs" / "train").iterdir())) == 2


def test_cli_errors_name_the_problem(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completions": ["a"], "ranks": [0]}) + "\n")
    assert cli.main(["train", "--data", str(bad), "--keep-unrankable", "--model", "x"]) == 1
    assert "row 0: 1 completion(s)" in capsys.readouterr().err
    assert cli.main(["train", "--recipe", "smoke"]) == 1
    assert "--algo" in capsys.readouterr().err


def test_train_ranked_dataset_in(tiny_gpt, tiny_tokenizer, ranked, tmp_path):
    run = train_ranked(ranked, "pro", (tiny_gpt, tiny_tokenizer), "tiny", runs_dir=tmp_path, data_name="x",
                       max_steps=1, per_device_train_batch_size=4)
    assert isinstance(ranked, datasets.Dataset) and (run / "best" / "model.safetensors").exists()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "loss_pro" in records[0] and "loss_sft" in records[0]


def _colon_then_line_break(tokenizer, rows) -> int:
    """Token pairs (ends with ':', starts with a line break) among the completion tokens the trainer scores."""
    from divscale.train.logprobs import encode_completions

    batch = ListwiseCollator(tokenizer, "pro")(list(rows))
    enc = encode_completions(tokenizer, batch["prompts"], batch["completions"], 128, 64)
    pairs = 0
    for ids, mask in zip(enc["completion_ids"].flatten(0, 1), enc["completion_mask"].flatten(0, 1)):
        pieces = [tokenizer.decode([t]) for t in ids[mask.bool()].tolist()]
        pairs += sum(a.endswith(":") and b.startswith("\n") for a, b in zip(pieces, pieces[1:]))
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
