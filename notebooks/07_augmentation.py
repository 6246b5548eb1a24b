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
# # 07 · Diversity-guided data augmentation (secondary / exploratory)
#
# Not the study's primary question (05): the contrasts here are secondary tests, each with its CI and MDE, counted
# at the end, not corrected for multiplicity. With few training seeds per arm their MDEs are large: read them as
# demonstrations of the method, not as evidence for or against it.
#
# If test reward is linear in prompt diversity d, then *adding* prompts that raise d should help more than
# adding the same number of random prompts. The paper uses its metric this way (spec §5; its augmentation
# code is not public, so this is a reconstruction with every parameter exposed in the recipe's `augment:`
# section):
#
# 1. a **base set** S: the grid's subset of `seed_size` prompts (the same prompts, and the same 2-rankings,
#    as that grid cell, so `base only` trains on exactly that cell's data);
# 2. a **candidate pool** U of other pool prompts: the next `candidate_pool` prompts of the grid's seeded
#    order after the base set (the grid's own larger subsets first, whose rankings 01 has already built; the
#    cpu recipe's candidates are exactly those, so 07 generates nothing new). An added prompt is an HH
#    record like any other: it brings its two human responses and two generated ones, all four ordered by
#    RM_train, exactly as in the grid. So the augmented sets hold twice as many labelled prompts as the base
#    set: the experiment compares two ways of choosing the *same number* of extra labelled prompts, not free
#    data;
# 3. rounds of m candidates: a candidate is **dropped** when its token-bigram Jaccard similarity to any
#    support prompt (the base set and what was added so far) reaches τ; among the survivors, the one that
#    raises d the most is added; until K prompts are added;
# 4. the baseline adds K prompts drawn at random from U.
#
# A prompt's 2-ranking is drawn once (the grid's for a grid prompt, a stream of its own for a candidate), so
# the base set trains on the same 2-rankings in all three arms. Each set is trained with PRO and SFT
# (the recipe's `augment.train_seeds`) and scored with RM_test.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import pandas as pd

from divscale.metrics.diversity import prompt_diversity
from divscale.report import analysis, plots
from divscale.report import publish as summary
from divscale.study import pipeline

R = pipeline.load(recipe, overrides)
plots.set_style()
print(R.augment)

# %% [markdown]
# ## The base set is the grid's subset of the same size

# %%
base = pipeline.augmentation_base(R)
n = R.augment.ranking_len
cell = pipeline.grid(R).get((n, len(base)))
if cell is None:
    print(f"{len(base)} is not a grid size: the base set is the first {len(base)} prompts of the grid's shuffle")
else:
    print(f"base set = grid cell (n={n}, k={len(base)}), same prompts and 2-rankings:",
          pipeline.n_rankings(R, base, n) == cell)

# %% [markdown]
# ## The three training sets and their diversity

# %%
sets = pipeline.augmentation_sets(R)
tok = pipeline.diversity_tokenizer(R)
pd.DataFrame({method: prompt_diversity([r.prompt for r in rs], tok).to_dict() for method, (rs, _) in sets.items()}).T

# %%
log = pd.DataFrame(sets["base + diverse"][1].log)
print(f"diverse augmentation: {len(log)} prompts added after drawing {log['drawn'].sum()} candidates, "
      f"{log['dropped'].sum()} of them dropped as near-duplicates (Jaccard >= {R.augment.jaccard_tau})")
log.tail()

# %% [markdown]
# ## Training on each set

# %%
aug = pipeline.augmentation_experiment(R)
aug.groupby(["algo", "method"])[["n_prompts", "d", "reward_global"]].agg(["mean", "std", "count"]).round(3)

# %%
fig = plots.plot_augmentation(aug, by="method")
_ = plots.save_figure(fig, "augmentation", pipeline.figures_dir(R))

# %% [markdown]
# ## Diverse vs random augmentation, with confidence intervals over training seeds

# %%
analysis.method_table(aug, by="method", baseline="base + random", compare="base + diverse")

# %% [markdown]
# The same contrasts as `divscale summarize` reports them (Welch's t, with the MDE and each arm's median prompt
# length in the diversity metric's tokens: d's unique-bigram ratio favours short prompts, so an arm that raises d
# may do it with shorter prompts):

# %%
contrasts = summary.secondary_contrasts(None, augmentation=aug)
display_cols = ["estimate", "ci_lo", "ci_hi", "mde", "test", "n_a", "n_b", "status", "prompt_tokens_median"]
print(pd.DataFrame(contrasts).T.reindex(columns=display_cols).to_string())
print(f"secondary / exploratory tests in this notebook: {summary.count_tests(contrasts)}; no correction for "
      "multiplicity")

