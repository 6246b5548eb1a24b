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
# # 08 · Selecting prompts at an equal budget: d-greedy, Deita and baselines
#
# A competing way to use a diversity signal is to *select* a budgeted subset from a larger pool.
# **Deita** (Liu et al. 2024, "What Makes Good Data for Alignment?") is *score-first, diversity-aware*:
# every sample gets complexity × quality scores (from LLM scorers that rate 1–6; the score is the
# expectation over the six digit tokens' probabilities, summed over turns), samples are sorted by score,
# and a sample is kept only if its cosine **similarity** to every kept sample is ≤ τ = 0.9 (Deita's code
# compares similarity, although its paper says distance), until the budget is reached.
#
# Offline the scorers are SmolLM2-135M-Instruct prompted with Deita's templates (Deita's own 13B scorers on
# GPU); embeddings are MiniLM. Beside Deita: random, MinHash near-duplicate removal then random, and
# **d-greedy** (the paper's metric as a selection objective). Every selector picks the same number of prompts
# from the same candidate pool, so all runs have the same annotation budget.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import pandas as pd

from divscale import pipeline, plots

R = pipeline.load(recipe, overrides)
plots.set_style()
print(R.select)

# %% [markdown]
# ## Diversity of each selection

# %%
div = pipeline.selection_diversity(R)
div

# %% [markdown]
# ## Test reward after training on each selection

# %%
sel = pipeline.selection_experiment(R)
sel.groupby(["algo", "strategy"])[["d", "reward_global"]].agg(["mean", "std", "count"]).round(3)

# %%
table = sel.merge(div.drop(columns=["d"], errors="ignore"), on="strategy", how="left")
fig = plots.plot_selection(table, by="strategy")
plots.save_figure(fig, "selection", pipeline.figures_dir(R))

# %% [markdown]
# ## Each selector against random selection, with confidence intervals over seeds

# %%
pd.concat([pipeline.method_differences(sel, by="strategy", baseline="random", compare=name)
           for name in R.select.selectors if name != "random"])
