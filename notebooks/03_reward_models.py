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
# # 03 · Reward models: RM_train and RM_test
#
# The paper uses two OpenAssistant reward models of one family (spec §4.1): **RM_train**, the 1.4B model, orders
# every training ranking (and so gives PRO its reward-gap temperatures); **RM_test**, the larger 6.9B model,
# scores the final generations on the test set. Reported reward = 100 × mean sigmoid(logit).
#
# Those models cannot be downloaded here, so the offline recipes train their own on frozen MiniLM sentence
# embeddings (shipped inside a PyPI wheel); `reward.design` says how the two relate, and neither sees a dev or
# test prompt:
# - `oa-distilled`: one family, as the paper's. RM_test regresses the 6.9B model's scores of the pool's pairs
#   (PRO's authors shipped them with their evaluation files) beside the human labels; RM_train is the same recipe
#   on a share of RM_test's pairs (`reward.train_share`), a weaker member of the family, as the 1.4B is to the 6.9B;
# - `human-pairs`: two peer heads on disjoint halves of the human labels.
#
# RM_test is then the study's judge and RM_train the proxy whose rankings the policy is trained on: a controlled
# world, as in Gao et al. (2022, "Scaling Laws for Reward Model Overoptimization"). It tells what *RM_test*
# rewards, not what humans prefer; the tables below say how close RM_test comes to the 6.9B and to the human
# labels. The `paper-*` recipes load the real OpenAssistant models through the same `score(prompts, responses)`
# interface.
#
# Below, on the held-out test split, with Wilson 95% CIs: each RM's agreement with the human labels, beside the
# length baseline (the longer response wins) and the 6.9B's own accuracy on the same pairs, and its agreement
# with the 6.9B, overall and by subset (`results/<recipe>/reports/reward_models.csv`); then RM_train against
# RM_test, on the test pairs and on the grid's 4-rankings (`results/<recipe>/reports/rm_agreement.json`).
# `divscale summarize` takes both into summary.json and the README.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import pandas as pd

from divscale.report import plots
from divscale.report import publish as summary
from divscale.study import pipeline

R = pipeline.load(recipe, overrides)
plots.set_style()
rm_train, rm_test = pipeline.reward_models(R)
r = R.reward
print(f"reward.design: {r.design}" + (f" (RM_train on {r.train_share:.0%} of RM_test's pairs, 6.9B-score weight "
                                      f"{r.oa_weight:g})" if r.design == "oa-distilled" else ""))

# %% [markdown]
# ## Validity: each RM against the human labels and against the 6.9B

# %%
report = pipeline.rm_report_table(R)
_ = summary.write_rm_report(R.name, report)
cells = [f"{x.value:.3f} [{x.ci_lo:.3f}, {x.ci_hi:.3f}] of {x.n:.0f}" for x in report.itertuples()]
table = (report.assign(cell=cells).pivot(index=["model", "subset"], columns="metric", values="cell")
         .reindex(columns=["accuracy", "length_baseline", "oa_agreement", "oa_accuracy"]).fillna("—"))
table

# %%
accuracy = plots.rm_plot_frame(report)
fig = plots.plot_rm_report(accuracy)
_ = plots.save_figure(fig, "reward_models", pipeline.figures_dir(R))

# %% [markdown]
# Where a reward model's CI contains 0.5 it is at chance on that subset (circled in the figure):

# %%
at_chance = accuracy[(accuracy.accuracy_lo <= 0.5) & (accuracy.accuracy_hi >= 0.5)
                     & ~accuracy.model.str.contains("length")]
at_chance[["model", "subset", "accuracy", "accuracy_lo", "accuracy_hi", "n"]].round(3)

# %% [markdown]
# ## RM_train against RM_test: the proxy against the judge
#
# How often the two prefer the same response of a held-out test pair (ties on one side count half), with the
# Pearson r of their scores; and how RM_test orders the grid's 4-rankings that RM_train ordered: the same best
# response, the same full order, and Kendall's τ between the two orders, each beside its chance level.

# %%
agreement = pipeline.rm_agreement(R)
_ = summary.write_rm_agreement(R.name, agreement["held_out_pairs"], agreement["rankings4"])
h, r4 = agreement["held_out_pairs"], agreement["rankings4"]
pd.DataFrame([
    {"measure": "same preference on held-out test pairs", "value": h["value"], "ci_lo": h["ci95"][0],
     "ci_hi": h["ci95"][1], "n": h["n"], "chance": 0.5},
    {"measure": "score Pearson r on those pairs", "value": h["score_r"], "n": h["n"]},
    {"measure": "same top response, grid 4-rankings", "value": r4["top1"]["value"], "ci_lo": r4["top1"]["ci95"][0],
     "ci_hi": r4["top1"]["ci95"][1], "n": r4["top1"]["n"], "chance": r4["chance"]["top1"]},
    {"measure": "same full order, grid 4-rankings", "value": r4["same_order"]["value"],
     "ci_lo": r4["same_order"]["ci95"][0], "ci_hi": r4["same_order"]["ci95"][1], "n": r4["same_order"]["n"],
     "chance": r4["chance"]["same_order"]},
    {"measure": "Kendall τ, grid 4-rankings (mean, t CI)", "value": r4["kendall_tau"]["value"],
     "ci_lo": r4["kendall_tau"]["ci95"][0], "ci_hi": r4["kendall_tau"]["ci95"][1], "n": r4["kendall_tau"]["n"],
     "chance": 0.0},
]).set_index("measure").round(3)
