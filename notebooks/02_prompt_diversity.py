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
# # 02 · Prompt diversity d
#
# The paper measures the diversity of a set of prompts X with one number (spec §1):
#
# $$ d(X) = |X|^{1/p} \cdot r_\text{unique}(X), \qquad
#    r_\text{unique}(X) = \frac{\left|\bigcup_{x \in X} G_N(x)\right|}{\sum_{x\in X} |\text{grams}_N(x)|} $$
#
# where the N-grams are token N-grams formed *inside* each prompt (the whole dialogue context up to the
# final `Assistant:`), `r_unique` is a corpus-level type/token ratio over N-grams, and the root rewards
# quantity with diminishing returns. The paper uses **N = 2** (LLaMA-tokenizer bigrams, BOS kept, first
# 512 tokens) and **p = 2**. `r_unique` falls as the set grows, because N-grams repeat; `√|X|` grows.
#
# A worked example: prompts `[A B C D]`, `[A B C E]`, `[F G]` have 7 bigrams, 5 distinct: d = √3·5/7 = 1.237.
# Dropping the near-duplicate second prompt *raises* d to √2 = 1.414. Near-duplicates lower d.
#
# Offline there is no LLaMA tokenizer, so d is computed with the SmolLM2 tokenizer (a byte-level BPE
# like LLaMA's); absolute values therefore differ from the paper's Figure 4(b), and the comparison is on
# the shape of the curve.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import numpy as np
import pandas as pd

from divscale import diversity, pipeline, plots
from divscale.analysis import paper_diversity

R = pipeline.load(recipe, overrides)
plots.set_style()
tokenizer = pipeline.diversity_tokenizer(R)

# %% [markdown]
# ## The worked example, computed

# %%
toy = [np.array(x) for x in ([1, 2, 3, 4], [1, 2, 3, 5], [6, 7])]
print(diversity.diversity_from_ids(toy), diversity.diversity_from_ids([toy[0], toy[2]]), sep="\n")

# %% [markdown]
# ## d for every subset size of the grid (Figure 4(b) analogue)

# %%
div = pipeline.diversity_by_size(R)
div

# %%
fig = plots.plot_diversity_by_size(div, paper=paper_diversity())
plots.save_figure(fig, "diversity_by_size", pipeline.figures_dir(R))

# %% [markdown]
# ## Sensitivity to N and p
#
# How d moves with the N-gram order and the decay exponent 1/p on the same nested subsets.
# Which p makes *reward* most linear in d is fitted in `06_diversity_regression`.

# %%
sens = pipeline.diversity_sensitivity(R)
sens.pivot_table(index="size", columns=["n", "exponent"], values="d").round(3)

# %% [markdown]
# ## d beside other diversity measures on the same subsets
#
# distinct-n (Li et al. 2016), the n-gram diversity score and compression ratio (Shaib et al. 2024),
# mean pairwise Jaccard, and embedding-based measures on MiniLM embeddings: Vendi score (effective
# number of distinct prompts), remote-clique (mean pairwise cosine distance) and chamfer distance
# (mean nearest-neighbour distance). Compression ratio is *higher* for *less* diverse sets.

# %%
measures = pipeline.diversity_measures(R)
measures

# %%
print("Spearman rank correlation of each measure with d across subset sizes:")
measures.drop(columns=["label"]).corr(method="spearman")["d"].round(2)
