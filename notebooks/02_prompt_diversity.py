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
# A worked example (computed below): the prompts `[A B C D]`, `[A B C E]` and `[F G]` share two of their bigrams;
# dropping the near-duplicate second prompt *raises* d, although the set is smaller. Near-duplicates lower d.
#
# Offline there is no LLaMA tokenizer, so d is computed with SmolLM2's tokenizer, a byte-level BPE (GPT-2
# style). LLaMA's is a SentencePiece BPE with byte fallback: another vocabulary and another segmentation,
# so the bigrams, and with them the absolute values of d, differ from the paper's Figure 4(b); the
# comparison is on the shape of the curve.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import numpy as np

from divscale.metrics import diversity
from divscale.report import plots
from divscale.report.analysis import paper_diversity
from divscale.study import pipeline

R = pipeline.load(recipe, overrides)
plots.set_style()
tokenizer = pipeline.diversity_tokenizer(R)

# %% [markdown]
# ## The worked example, computed

# %%
toy = [np.array(x) for x in ([1, 2, 3, 4], [1, 2, 3, 5], [6, 7])]       # A B C D / A B C E / F G
for label, prompts in (("all three prompts", toy), ("without the near-duplicate", [toy[0], toy[2]])):
    print(f"{label}:", diversity.diversity_from_ids(prompts).to_dict())

# %% [markdown]
# ## d for every subset size of the grid (Figure 4(b) analogue)

# %%
div = pipeline.diversity_by_size(R)
div

# %%
fig = plots.plot_diversity_by_size(div, paper=paper_diversity())
_ = plots.save_figure(fig, "diversity_by_size", pipeline.figures_dir(R))

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

# %% [markdown]
# Across the nested sizes every measure that moves monotonically with |X| has a rank correlation of ±1
# with d, which says nothing. The informative comparison holds the size fixed: many random subsets of the
# smallest size, drawn from the largest subset's prompts, differ only in *which* prompts they hold. A measure
# that agrees with d on what "diverse" means correlates positively with it there; compression ratio and
# mean pairwise Jaccard rise for *less* diverse sets, so agreement shows as a negative correlation for them.

# %%
draws = pipeline.measures_across_random_subsets(R, draws=100)
columns = [c for c in draws.columns if c not in ("label", "n_prompts", "unique_ngrams", "total_ngrams")]
print(f"Spearman correlation with d over {len(draws)} random subsets of {int(draws['n_prompts'].iloc[0])} prompts:")
draws[columns].corr(method="spearman")["d"].drop("d").round(2)
