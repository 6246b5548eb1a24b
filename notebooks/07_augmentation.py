# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Diversity-guided data augmentation
#
# If test reward is linear in prompt diversity d, then *adding* prompts that raise d should help more than
# adding the same number of random prompts. The paper uses its metric this way (spec §5; its augmentation
# code is not public, so this is a reconstruction with every parameter exposed in the recipe's `augment:`
# section):
#
# 1. a **seed set** S: a budgeted labelled subset (here the first `seed_size` prompts of the grid order);
# 2. a **candidate pool** U of other pool prompts; added prompts get generated responses ranked by RM_train,
#    so they cost no new human labels;
# 3. rounds of m candidates: a candidate is **dropped** when its token-bigram Jaccard similarity to any
#    support prompt (the seed set and what was added so far) reaches τ; among the survivors, the one that
#    raises d the most is added; until K prompts are added;
# 4. the baseline adds K prompts drawn at random from U.
#
# Both sets are then trained with PRO and SFT (several seeds) and scored with RM_test.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import pandas as pd

from divscale import pipeline, plots
from divscale.diversity import prompt_diversity

R = pipeline.load(recipe, overrides)
plots.set_style()
print(R.augment)

# %% [markdown]
# ## The three training sets and their diversity

# %%
sets = pipeline.augmentation_sets(R)
tok = pipeline.diversity_tokenizer(R)
pd.DataFrame({method: prompt_diversity([r.prompt for r in rs], tok).to_dict() for method, (rs, _) in sets.items()}).T

# %%
log = pd.DataFrame(sets["seed + diverse"][1].log)
log.tail()

# %% [markdown]
# ## Training on each set

# %%
aug = pipeline.augmentation_experiment(R)
aug.groupby(["algo", "method"])[["d", "reward_global"]].agg(["mean", "std", "count"]).round(3)

# %%
fig = plots.plot_augmentation(aug, by="method")
plots.save_figure(fig, "augmentation", pipeline.figures_dir(R))

# %% [markdown]
# ## Diverse vs random augmentation, with confidence intervals over seeds

# %%
pipeline.method_differences(aug, by="method", baseline="seed + random", compare="seed + diverse")
