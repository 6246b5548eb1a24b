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
# # 08 · Selecting prompts at an equal budget: d-greedy, Deita and baselines (secondary / exploratory)
#
# Not the study's primary question (05): the contrasts here are secondary tests, each with its CI and MDE, counted
# at the end, not corrected for multiplicity. With few training seeds per arm their MDEs are large.
#
# A competing way to use a diversity signal is to *select* a budgeted subset from a larger pool.
# **Deita** (Liu et al. 2024, "What Makes Good Data for Alignment?") is *score-first, diversity-aware*:
# every sample gets complexity × quality scores (from LLM scorers that rate on a small integer scale; the score
# is the expectation over the scale's digit tokens' probabilities, summed over turns), samples are sorted by score,
# and a sample is kept only if its cosine **similarity** to every kept sample is ≤ τ (Deita's code
# compares similarity, although its paper says distance), until the budget is reached.
#
# Offline the scorers are SmolLM2-135M-Instruct prompted with Deita's templates (Deita's own 13B scorers on
# GPU); embeddings are MiniLM. Beside Deita: random, and **d-greedy** (the paper's metric as a selection
# objective). Every selector picks the same number of prompts from the same candidate pool (the first
# `candidate_pool` prompts of the grid's seeded order: on the cpu recipe exactly the grid's prompts, already
# ranked in 01), so all runs have the same annotation budget. Each selector reports what it removed on the
# way, and two arms that pick the same prompts are marked identical (`identical_to`) and not tested against
# each other.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import pandas as pd
from IPython.display import display

from divscale.report import analysis, plots
from divscale.report import publish as summary
from divscale.study import pipeline

R = pipeline.load(recipe, overrides)
plots.set_style()
print(R.select)

# %% [markdown]
# ## Does the candidate pool have near-duplicates?
#
# A MinHash dedup arm (`minhash-dedup`: random's order, skipping any prompt whose bigram Jaccard with a prompt
# already chosen reaches the threshold) only makes sense if the pool has near-duplicates. The table counts,
# per threshold, the candidate pairs at or above it and the candidates that have such a neighbour; the
# quantiles are over all pairs and over each candidate's nearest neighbour. HH prompts all share their
# role-tag bigrams (`Human`, `:` …), so two different one-line questions already overlap noticeably.

# %%
by_threshold, quantiles = pipeline.pool_jaccard_profile(R)
at = by_threshold.set_index("threshold").loc[R.select.dedup_threshold]
print(f"largest bigram Jaccard between two of the {R.select.candidate_pool} candidates: "
      f"{quantiles.loc[1.0, 'all pairs']:.2f}; at the dedup threshold {R.select.dedup_threshold}: "
      f"{int(at['pairs'])} pairs, {int(at['prompts_with_a_neighbour'])} candidates with a near-duplicate; "
      f"the dedup arm is {'in' if 'minhash-dedup' in R.select.selectors else 'not in'} this recipe's selectors")
display(by_threshold.round(4))
quantiles.round(3)

# %% [markdown]
# ## What each selector picked and removed

# %%
pipeline.selection_report(R)

# %% [markdown]
# ## Diversity and prompt length of each selection
#
# Higher is more diverse for every measure except two: the gzip **compression ratio** and the **mean pairwise
# Jaccard** rise when a set is *less* diverse. d rewards a high unique-bigram ratio, which short prompts have;
# so compare each selection's prompt lengths (`prompt_tokens_mean`, in the metric's tokens) with its d and its
# embedding measures (Vendi, remote clique, chamfer).

# %%
div = pipeline.selection_diversity(R)
div

# %% [markdown]
# ## Test reward after training on each selection

# %%
sel = pipeline.selection_experiment(R)
sel.groupby(["algo", "strategy"])[["d", "reward_global"]].agg(["mean", "std", "count"]).round(3)

# %%
table = sel.merge(div.drop(columns=["d", "r_unique", "identical_to", "removed"]), on="strategy", how="left")
fig = plots.plot_selection(table, by="strategy")
_ = plots.save_figure(fig, "selection", pipeline.figures_dir(R))

# %% [markdown]
# ## Each selector against random selection, with confidence intervals over training seeds

# %%
analysis.method_table(sel, by="strategy", baseline="random",
                      compare=[name for name in R.select.selectors if name != "random"])

# %% [markdown]
# The same contrasts as `divscale summarize` reports them (Welch's t, with the MDE and each arm's median prompt
# length: a selector that raises d by picking short prompts changes two things at once, and the reward difference
# cannot say which one it follows):

# %%
contrasts = summary.secondary_contrasts(None, selection=sel)
display_cols = ["estimate", "ci_lo", "ci_hi", "mde", "test", "n_a", "n_b", "status", "prompt_tokens_median"]
print(pd.DataFrame(contrasts).T.reindex(columns=display_cols).to_string())
print(f"secondary / exploratory tests in this notebook: {summary.count_tests(contrasts)}; no correction for "
      "multiplicity")

