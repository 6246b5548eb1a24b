# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Listwise losses on human rankings: PRO, Plackett–Luce, all-pairs DPO and SFT
#
# The study so far ranks responses with RM_train. Here the rankings are **human**: the English validation
# contexts of OpenAssistant oasst1, where volunteers ranked 2–5 sibling replies (`data/oasst1`, read by
# `divscale.data.formats.from_oasst1`). Two questions, on the recipe's tiny policy and RM_test:
#
# 1. **Which listwise loss?** PRO (the paper's, no reward temperature since human rankings carry no RM
#    scores, SFT weight 0.05·(n−1)²), Plackett–Luce (listwise DPO, β = 0.1), DPO on every ordered pair (the
#    "split the ranking into pairs" answer TRL and others give), and SFT on the best reply. **Equal
#    compute** here means the same optimizer steps, prompts per step, learning rate and training prompts;
#    SFT puts one sequence per prompt through the model, the others all of a prompt's replies (and the
#    two DPO losses a frozen reference forward too).
# 2. **The paper's question with human rankings**: at an equal number of ranked responses, do longer
#    rankings help? PRO on 3-rankings of B/3 prompts against 2-rankings (2 of the 3 replies, drawn at
#    random as the paper's sub-ranking rule) of B/2 prompts, the B/3 prompts being among the B/2.
#
# The policy has only ever seen HH text, where a line break is turn structure; oasst1's markdown replies
# are therefore written **on one line** for it (see "The text form" below: trained on the replies as they
# are, the policy learns to open every answer with line breaks and its greedy answers come out empty).
#
# Held-out oasst1 contexts are the test prompts; each run's greedy answers are scored by RM_test
# (100 × mean sigmoid). RM_test was trained on HH-RLHF pairs, not on oasst1, so its judgement of these
# answers is a proxy of unknown quality here. Every contrast comes with a 95% CI over training seeds and its
# minimum detectable effect (MDE, α = 0.05, 80% power: `divscale.report.analysis`).

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import time
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from divscale.data.formats import from_oasst1, one_line_ranked
from divscale.metrics.stats import bootstrap_ci, bounded_interval, paired_contrast, sigmoid, welch_contrast
from divscale.models.generation import format_prompt, generate
from divscale.models.hub import load_causal_lm
from divscale.models.tiny_gpt import load_policy
from divscale.paths import DATA_DIR
from divscale.report import plots
from divscale.study import pipeline
from divscale.train.own_data import split_ranked, sub_ranked
from divscale.train.runs import train_ranked

started = time.time()
R = pipeline.load(recipe, overrides)
plots.set_style()
T = R.train
# sizes follow the recipe: two thirds of its step budget (18 runs must fit the notebook's share of `make
# figures`), its prompts per step, learning rate, seeds and token budgets
STEPS, BATCH, LR, SEEDS = max(1, 2 * T.max_steps // 3), T.prompts_per_step, T.learning_rate, list(T.seeds)
MAX_LENGTH = T.max_length or R.policy.block_size                # unset: the policy's positions
MAX_PROMPT, MAX_COMPLETION = T.max_prompt_length, MAX_LENGTH - T.max_prompt_length
N_TEST = min(80, 2 * R.eval.test_prompts_per_subset)
print(f"recipe {R.name}: {STEPS} steps x {BATCH} prompts, lr {LR}, seeds {SEEDS}, prompt <= {MAX_PROMPT} tokens, "
      f"reply <= {MAX_COMPLETION} tokens, {N_TEST} test prompts")

# %% [markdown]
# ## The human rankings

# %%
oasst_raw = from_oasst1(DATA_DIR / "oasst1" / "en-validation.jsonl")
oasst = one_line_ranked(oasst_raw)                # same rows, ranks and order; each turn on one line
train, test = split_ranked(oasst, N_TEST, seed=R.data.grid_seed)
train_raw, test_raw = split_ranked(oasst_raw, N_TEST, seed=R.data.grid_seed)      # the same split, as written
print(f"{len(oasst)} ranked contexts (deleted replies dropped); replies per context: "
      f"{dict(sorted(Counter(len(c) for c in oasst['completions']).items()))}")
print(f"train {len(train)} contexts, test {len(test)} contexts; "
      f"{sum(p.count(chr(10) * 2 + 'Human:') > 1 for p in oasst['prompt'])} contexts are multi-turn")

# %% [markdown]
# ### The text form
#
# The policy was warmed up on HH-RLHF text, where `"\n\nHuman:"` / `"\n\nAssistant:"` delimit the turns:
# a colon there closes a role tag and the reply follows it, and a line break mostly starts the next turn.
# oasst1 replies are markdown: line breaks inside the reply, and colons that end a line (`"Here are the
# steps:\n1. ..."`). Fine-tuned on that, the tiny policy learns "after `:` comes a line break" and applies it
# to the `"Assistant:"` that ends every prompt; greedy decoding then emits only line breaks, an empty
# answer. Written on one line (`divscale.data.formats.one_line_ranked`: whitespace runs inside a turn become
# one space, the turn markers stay), the replies keep their words. The counts below come from the data;
# section 1 also trains one SFT run on the replies as written, to show the effect.

# %%
def colon_newline(texts) -> float:
    """Share of colons that end a line."""
    colons = sum(t.count(":") for t in texts)
    return sum(t.count(":\n") for t in texts) / max(1, colons)


raw_replies = [c for cs in train_raw["completions"] for c in cs]
one_line_replies = [c for cs in train["completions"] for c in cs]
hh_texts = pipeline.policy_texts(R)
print(f"oasst1 training replies as written: {np.mean([chr(10) in c for c in raw_replies]):.0%} contain a line "
      f"break, {colon_newline(raw_replies):.0%} of their colons end a line")
print(f"the policy's HH warm-up texts: {colon_newline(hh_texts):.0%} of colons end a line "
      "(almost all are role tags followed by the reply)")
print(f"one-line replies: {np.mean([chr(10) in c for c in one_line_replies]):.0%} contain a line break")

# %%
model0, tok = load_policy(R.policy, pipeline.policy_texts(R))
policy_id = pipeline.policy_fingerprint(R)
_, rm_test = pipeline.reward_models(R)
E = R.eval
test_prompts = list(test["prompt"])


def evaluate(model, prompts=test_prompts) -> dict:
    """Greedy answers to the test prompts (the study's eval settings), 100 x sigmoid(RM_test), bootstrap CI."""
    answers = generate(model, tok, [format_prompt(p, tok) for p in prompts], max_new_tokens=E.max_new_tokens,
                       batch_size=E.batch_size, max_prompt_tokens=E.max_prompt_tokens,
                       stop_strings=tuple(E.stop_strings))
    scores = 100 * sigmoid(np.asarray(rm_test.score(prompts, answers), dtype=float))
    lo, hi = bootstrap_ci(scores, n_boot=E.bootstrap)
    empty = float(np.mean([not a.strip() for a in answers]))        # a collapsed policy answers nothing
    return {"reward": float(scores.mean()), "ci_lo": lo, "ci_hi": hi, "empty": empty}


def run(data, loss, seed, eval_prompts=test_prompts, **labels) -> dict:
    run_dir = train_ranked(data, loss, (model0, tok), policy_id, seed=seed, data_name=f"oasst1-{labels['set']}",
                           max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=LR,
                           max_prompt_length=MAX_PROMPT, max_length=MAX_LENGTH, sft_reduction="sequence_sum",
                           weight_decay=T.weight_decay, max_grad_norm=T.max_grad_norm)
    model, _ = load_causal_lm(run_dir / "best")
    return {"loss": loss, "seed": seed, **labels, **evaluate(model, eval_prompts), "run": run_dir.name}


initial = evaluate(model0)
setup_seconds = time.time() - started
print(f"policy: {R.policy.model}, {sum(p.numel() for p in model0.parameters()):,} parameters")
print(f"initial policy on the oasst1 test prompts: {initial['reward']:.2f} "
      f"(95% CI over prompts {initial['ci_lo']:.2f}-{initial['ci_hi']:.2f})")

# %% [markdown]
# ## 1 · Four losses at equal compute
#
# Every loss trains on the same training contexts (2–5 replies each) from the same initial weights; for a
# seed, the data order is the same for all four, so losses are compared **paired by seed**.

# %%
LOSSES = ["sft", "pro", "plackett_luce", "all_pairs_dpo"]
losses = pd.DataFrame([run(train, loss, seed, set="all") for loss in LOSSES for seed in SEEDS])
summary = []
for loss, g in losses.groupby("loss", sort=False):
    mean, lo, hi = bounded_interval(g["reward"])
    summary.append({"loss": loss, "runs": len(g), "reward": mean, "ci_lo": lo, "ci_hi": hi,
                    "seed sd": g["reward"].std(ddof=1) if len(g) > 1 else np.nan,
                    "empty answers": g["empty"].mean()})
pd.DataFrame(summary).round(2)

# %%
contrasts = []
for loss in LOSSES[1:]:
    c = paired_contrast(losses[losses.loss == loss], losses[losses.loss == "sft"], "reward")
    contrasts.append({"comparison": f"{loss} − sft", "diff": c["estimate"], "ci_lo": c["ci_lo"], "ci_hi": c["ci_hi"],
                      "mde": c["mde"], "status": c["status"], "test": c["test"]})
c = paired_contrast(losses[losses.loss == "plackett_luce"], losses[losses.loss == "all_pairs_dpo"], "reward")
contrasts.append({"comparison": "plackett_luce − all_pairs_dpo", "diff": c["estimate"], "ci_lo": c["ci_lo"],
                  "ci_hi": c["ci_hi"], "mde": c["mde"], "status": c["status"], "test": c["test"]})
contrasts = pd.DataFrame(contrasts)
contrasts.round(2)

# %%
best = max(summary, key=lambda s: s["reward"])
print(f"Highest mean reward: {best['loss']} ({best['reward']:.2f}); initial policy {initial['reward']:.2f}.")
print(f"Share of empty greedy answers: initial {initial['empty']:.0%}; "
      + ", ".join(f"{s['loss']} {s['empty answers']:.0%}" for s in summary)
      + " (an empty answer gets RM_test's fixed score for nothing, so equal rewards across seeds mean collapse)")
for row in contrasts.itertuples():
    print(f"{row.comparison}: {row.diff:+.2f} (95% CI {row.ci_lo:+.2f} to {row.ci_hi:+.2f}; MDE {row.mde:.2f}) "
          f"-> {row.status}")

# %% [markdown]
# The same SFT run (first seed) on the oasst1 text **as written** (line breaks kept; its test prompts too):
# the check that the one-line form is what keeps the answers from being empty.

# %%
raw = run(train_raw, "sft", SEEDS[0], eval_prompts=list(test_raw["prompt"]), set="raw")
same = losses[(losses.loss == "sft") & (losses.seed == SEEDS[0])].iloc[0]
print(f"SFT, seed {SEEDS[0]}: empty greedy answers {raw['empty']:.0%} trained on the text as written "
      f"(reward {raw['reward']:.2f}) vs {same['empty']:.0%} on one-line text (reward {same['reward']:.2f})")

# %% [markdown]
# ## 2 · Equal number of ranked responses: longer human rankings or more prompts?
#
# Only contexts with at least 3 ranked replies take part. A budget of B ranked responses buys B/3 prompts
# with 3-rankings or B/2 prompts with 2-rankings (two of the three replies at random, re-sorted). PRO, the
# paper's loss, trains on each with the same steps. The two sets hold different prompts, so runs are
# independent: Welch's t over seeds.

# %%
three = train.filter(lambda r: len(r["completions"]) >= 3)
three = sub_ranked(three, 3, seed=R.data.grid_seed)
budget = 6 * (min(R.grid.equal_budgets[0], 2 * len(three)) // 6)   # the recipe's budget; B/2 prompts must exist
k3, k2 = budget // 3, budget // 2
set3 = three.select(range(k3))
set2 = sub_ranked(three.select(range(k2)), 2, seed=R.data.grid_seed)
print(f"{len(three)} training contexts with >= 3 replies; budget B = {budget} ranked responses: "
      f"n=3 on {k3} prompts, n=2 on {k2} prompts")
lengths = pd.DataFrame([run(data, "pro", seed, set=f"n{n}", n=n, prompts=len(data))
                        for n, data in ((2, set2), (3, set3)) for seed in SEEDS])
lengths.groupby("n").agg(reward=("reward", "mean"), sd=("reward", "std"), runs=("reward", "size"),
                         empty_answers=("empty", "mean")).round(2)

# %%
v = welch_contrast(lengths[lengths.n == 3]["reward"], lengths[lengths.n == 2]["reward"])
print(f"PRO, B = {budget} ranked responses: n=3 ({k3} prompts) {v['mean_a']:.2f} vs n=2 ({k2} prompts) "
      f"{v['mean_b']:.2f}: difference {v['estimate']:+.2f} (95% CI {v['ci_lo']:+.2f} to {v['ci_hi']:+.2f}; "
      f"MDE {v['mde']:.2f}) -> {v['status']}, {v['direction']}")

# %%
def bar(mean: float, lo: float, hi: float) -> list[list[float]]:
    """Error-bar lengths; the bounded (logit-scale) interval need not be centred on the mean, nor contain it."""
    return [[max(0.0, mean - lo)], [max(0.0, hi - mean)]]


def jitter(n: int, width: float) -> np.ndarray:
    return np.linspace(-width, width, n) if n > 1 else np.zeros(n)


fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True, gridspec_kw={"width_ratios": [4, 2]})
ax = axes[0]
order = LOSSES
for i, loss in enumerate(order):
    g = losses[losses.loss == loss]["reward"]
    s = next(s for s in summary if s["loss"] == loss)
    ax.scatter(i + jitter(len(g), 0.08), g, s=14, color="0.55", zorder=2, label="one run (seed)" if i == 0 else None)
    if np.isfinite(s["ci_lo"]):
        ax.errorbar(i, s["reward"], yerr=bar(s["reward"], s["ci_lo"], s["ci_hi"]), fmt="o",
                    color="C0", capsize=4, zorder=3, label="mean, 95% CI over seeds" if i == 0 else None)
    else:
        ax.plot(i, s["reward"], "o", color="C0", zorder=3, label="mean" if i == 0 else None)
ax.axhline(initial["reward"], ls="--", color="0.4", lw=1, label="initial policy")
ax.set_xticks(range(len(order)), ["SFT", "PRO", "Plackett–Luce", "all-pairs DPO"])
ax.set_ylabel("RM_test reward (×100)")
ax.set_title(f"oasst1 human rankings: equal compute ({STEPS} steps × {BATCH} prompts)")
ax.legend(loc="best", fontsize="small")
ax = axes[1]
for j, n in enumerate((2, 3)):
    g = lengths[lengths.n == n]["reward"]
    mean, lo, hi = bounded_interval(g)
    ax.scatter(j + jitter(len(g), 0.06), g, s=14, color="0.55", zorder=2)
    if np.isfinite(lo):
        ax.errorbar(j, mean, yerr=bar(mean, lo, hi), fmt="o", color="C1", capsize=4, zorder=3)
    else:
        ax.plot(j, mean, "o", color="C1", zorder=3)
ax.set_xticks([0, 1], [f"n=2\n{k2} prompts", f"n=3\n{k3} prompts"])
ax.set_xlim(-0.5, 1.5)
ax.axhline(initial["reward"], ls="--", color="0.4", lw=1)
ax.set_title(f"PRO, {budget} ranked responses")
fig.tight_layout()
plots.save_figure(fig, "listwise", pipeline.figures_dir(R))

# %% [markdown]
# ## Reading it
#
# The printed verdicts above are the result. Read them with the share of **empty answers**: a tiny policy
# that collapses to answering nothing (or repeating one token) scores the same for every prompt, so a loss
# can look better only because it collapses less -- or worse: RM_test may score an empty answer *above* this
# tiny policy's real answers (compare the run on the text as written with its one-line twin in section 1), so
# a reward is read only beside its share of empty answers. With a few seeds of the recipe's tiny policy (its size is printed
# above) trained for a few dozen steps, CIs are wide, and a true difference smaller than its MDE would likely
# go unseen. "Inconclusive" then
# says exactly that: the study at this scale cannot tell these losses (or these allocations) apart, not that
# they are equal. The dots are single runs; the bars are 95% intervals over seeds.

# %%
print(f"notebook time: {time.time() - started:.0f} s ({setup_seconds:.0f} s loading the policy and RM_test, "
      f"building them if not cached), {len(losses) + len(lengths) + 1} training runs")
