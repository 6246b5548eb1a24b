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
# # 09 · Listwise losses on human rankings against TRL's DPOTrainer on the same rankings split into pairs
#
# No mainstream trainer has a listwise preference loss; TRL's answer to "more than one rejected reply"
# (huggingface/trl#1831) is to split each ranking into pairs and train DPO. This notebook puts that answer
# beside divscale's listwise losses on the same human rankings, with the recipe's policy and RM_test, and
# measures both what they buy (test reward, win rate over the initial policy, empty answers) and what they
# cost (sequences and wall time per optimizer step).
#
# - **Data**: OpenAssistant oasst1's English validation contexts, where volunteers ranked sibling replies,
#   written on one line for a policy that has only seen HH text (`divscale.data.ranked.one_line_ranked`).
#   Held-out contexts give the test prompts; the other contexts with at least K replies, cut to K, are the
#   training rankings (the counts are printed below).
# - **Arms**: divscale's `RankingTrainer` on the rankings with PRO, Plackett–Luce, LiPO-λ and all-pairs DPO;
#   TRL's own `DPOTrainer` on the pairs `divscale data convert --to pairs` writes: best vs rest, and all pairs.
# - **Equal**: initial weights, training rankings, optimizer and learning rate, number of steps, rankings per
#   step, sequence lengths, no dropout, DPO's β. For the pairs arms "equal steps" means the *same rankings per
#   step*, so a step holds all their pairs; the other reading (as many pairs per step as rankings) is costed
#   below and measured in `benchmarks/bench_vs_trl_dpo.py`.
# - **Paired**: for a seed, every arm starts from the same weights and reads the same rankings in the same
#   steps (a seeded order of the rows), so each listwise − pairs contrast is a paired t over seeds, with its
#   CI and minimum detectable effect (MDE, at the level and power of `divscale.report.analysis`).
#
# The design, and what differs besides the loss (TRL appends EOS to every reply; PRO has no reference model),
# is written out in `divscale/study/listwise.py`. RM_test was trained on HH-RLHF pairs, not on oasst1: its
# judgement of these answers is a proxy of unknown quality here.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import json
import logging
import sys
import time
import warnings

import pandas as pd

from divscale.report import plots
from divscale.report.publish import listwise_summary
from divscale.study import listwise, pipeline

# The readers' notes of divscale go to this notebook's output, not to stderr; the HH reader's note on the two test
# records it cannot split is printed by 01_data_construction and would repeat here once per evaluated run. TRL 1.16
# reads a transformers attribute that transformers deprecates (FutureWarning, nothing a reader can change).
logging.getLogger("divscale").addHandler(logging.StreamHandler(sys.stdout))
logging.getLogger("divscale").propagate = False
logging.getLogger("divscale.data.hh").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

started = time.time()
R = pipeline.load(recipe, overrides)
D = listwise.design(R)
data = listwise.oasst1_data(R, D)
c = data.counts
print(f"recipe {R.name}: {D.steps} steps x {D.rows_per_step} rankings of K = {D.ranking_len}, lr {D.learning_rate:g}, "
      f"beta {D.beta:g}, max_length {D.max_length} (prompt <= {D.max_prompt_length}), seeds {list(D.seeds)}")
print(f"oasst1: {c['contexts']} ranked contexts, replies per context {c['replies']}; {c['test']} held out for testing; "
      f"of the other {c['train_contexts']}, {c['with_k']} have >= {D.ranking_len} replies ({c['ties_dropped']} with "
      f"tied ranks dropped): {c['train']} training rankings, {c['train'] / D.rows_per_step:.1f} steps an epoch")

# %% [markdown]
# ## What a step encodes
#
# A listwise step encodes each prompt once for its K completions and each completion once; a pairs step
# encodes `prompt + chosen` and `prompt + rejected` for every pair, so each completion once per pair it is in.
# The reference model (frozen) repeats the forward pass for every loss on DPO's implicit reward; PRO needs none.
# Per training ranking (last column) both readings of "equal steps" cost the same: they encode the same pairs.

# %%
listwise.cost_table(D)

# %% [markdown]
# ## The runs
#
# One line per run: its test reward, win rate over the initial policy, share of empty answers and wall time
# per step. Runs and evaluations are cached in their run folders (`runs/train/`), so a re-run only re-reads them;
# each folder can also be evaluated with `divscale evaluate --run`.

# %%
table = listwise.experiment(R, D, overrides=json.loads(overrides or "{}"))
S = listwise_summary(table)
print(f"{len(table) - 1} runs -> results/{R.name}/{listwise.TABLE}")

# %% [markdown]
# ## Quality
#
# Reward: RM_test on the greedy answers (×100), mean over seeds with a t-interval on the logit scale;
# "− initial": the gain over the initial policy on the same prompts (one-sample t over seeds); win rate: the share
# of test prompts where the run's answer scores above the initial policy's (ties half), mean over seeds.

# %%
listwise.quality_table(S).round(3)

# %% [markdown]
# ## Listwise against split-into-pairs
#
# Each divscale arm minus each TRL arm, paired by seed. "Inconclusive" means the CI spans 0: a true difference
# smaller than the MDE would likely go unseen with these seeds, not that the arms are equal.

# %%
listwise.contrast_table(S).round(2)

# %%
for line in listwise.sentences(S):
    print(line)

# %% [markdown]
# ## Cost, measured
#
# Wall time per optimizer step (training only, mean over seeds, one core shared with whatever else ran) and the
# sequences a step encodes. `benchmarks/bench_vs_trl_dpo.py` measures time per epoch in one process, arms
# alternating, on longer rankings.

# %%
listwise.measured_cost_table(S).round(3)

# %%
fig = plots.plot_listwise(table, S)
_ = plots.save_figure(fig, "listwise", pipeline.figures_dir(R))

# %% [markdown]
# ## Reading it
#
# Read every reward beside its share of empty answers and its win rate: a tiny policy can gain on RM_test by
# answering shorter, or lose by answering nothing. The verdicts above are the result; the CIs are over training
# seeds, the test prompts held fixed, so they say how much another seed would move an arm, not how well RM_test
# judges oasst1 answers. The pairs arms also learn to emit EOS (TRL appends it to every reply), which shortens
# greedy answers by itself; the answer lengths in the quality table show whether it did.

# %%
print(f"notebook time: {time.time() - started:.0f} s, {len(table) - 1} training runs "
      f"({pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC)")
