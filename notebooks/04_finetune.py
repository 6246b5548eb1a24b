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
# # 04 · One fine-tuning run: train, pick the checkpoint, evaluate
#
# This is the unit of the study: `divscale grid` executes this notebook once per cell
# (algorithm × ranking length n × #prompts × seed) with papermill, and the executed copies are kept
# under `runs/<recipe>/notebooks/`.
#
# **SFT** trains on the top-1 (RM_train-best) response of each ranking with the summed token NLL of the
# response. **PRO** (Preference Ranking Optimization, Song et al. 2023) scores every candidate by its
# length-normalised log-likelihood s_i and, for k = 1 … n−1, puts candidate k above all lower-ranked ones
# with a softmax whose temperatures come from RM_train reward gaps; the n−1 terms are summed and an SFT
# term on the best response is added with weight 0.05·(n−1)² (spec §3.3). **DPO** (TRL) on pairs drawn
# from the rankings is an extra baseline the paper does not have.
#
# Which checkpoint answers the test prompts is `train.checkpoint`. The paper's rule (`best-dev`): every
# `eval_every` steps the policy answers the dev prompts greedily, RM_train scores the answers, and the best
# checkpoint is kept (the paper validates periodically over its training steps). The cpu profile keeps the last
# step (`last`): with the cpu recipe's few dev prompts the choice followed noise (`recipes/cpu.yaml`). That
# checkpoint then answers the test prompts and RM_test scores them.

# %% tags=["parameters"]
recipe = "cpu"
algo = "pro"            # sft | pro | dpo
ranking_len = 4         # n
n_prompts = 60          # k, one of the recipe's data.sizes
seed = 42
overrides = "{}"
result_path = ""        # set by `divscale grid`: where the cell's result row is written (last step)

# %%

import pandas as pd

from divscale.study import pipeline

R = pipeline.load(recipe, overrides)

# %%
row = pipeline.run_cell(R, algo, ranking_len, n_prompts, seed)
pd.Series(row)

# %% [markdown]
# ## Training curve and dev reward

# %%
curve = pipeline.training_curve(row["run_dir"])
curve.tail()

# %%
ax = curve.plot(x="step", y=[c for c in ("loss", "dev_reward") if c in curve], subplots=True, figsize=(7, 4))

# %% [markdown]
# ## PRO's two loss terms
#
# PRO's loss is the ranking term L_PRO plus β·L_SFT on the best response, β = sft_weight·(n−1)². Every step
# logs both terms; every `loss_balance_steps` steps the trainer also measures the norm of each term's gradient
# on the same micro-batch, so the table says which term actually moves the weights (`grad_share_rank`: the
# ranking term's share of the two norms). SFT runs have only the SFT term.

# %%
terms = [c for c in ("loss_pro", "loss_sft_weighted") if c in curve and curve[c].notna().any()]
if terms:
    curve.plot(x="step", y=terms, figsize=(7, 2.5), title="PRO: ranking term and weighted SFT term")
pipeline.run_loss_balance(row)

# %% [markdown]
# ## A few test generations

# %%
gens = pipeline.generations(row)
gens[["subset", "prompt", "response", "score"]].assign(prompt=lambda g: g.prompt.str[-150:]).head(6)

# %% [markdown]
# What the row was made from: the fingerprints (content hashes) of RM_train, RM_test and the initial policy,
# the hash of the grid's rankings, the code versions of training and evaluation and the evaluation key.
# `divscale grid` redoes a cell whose row disagrees with the current ones, and refuses a table that mixes them.
# `train_seconds` / `eval_seconds` are the two parts' wall times; `created` is when the evaluation finished.

# %%
pd.Series({k: row[k] for k in row if k.startswith("key_") or k in ("eval_key", "created", "train_seconds",
                                                                  "eval_seconds")})

# %% [markdown]
# Last step: record the result. Its file is what tells `divscale grid` this cell is complete, so a cell
# whose notebook stopped anywhere above is run again.

# %%
pipeline.write_result(row, result_path)
