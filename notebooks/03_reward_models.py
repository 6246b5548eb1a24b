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
# The paper uses two *different* OpenAssistant reward models (spec §4.1):
#
# - **RM_train** = `oasst-rm-2.1-pythia-1.4b` orders every training ranking (and so gives PRO its
#   reward-gap temperatures) and picks the best checkpoint on the dev set;
# - **RM_test** = `oasst-rm-2-pythia-6.9b` scores the final generations on the test set.
#   Reported reward = 100 × mean sigmoid(logit).
#
# Those models cannot be downloaded here, so the offline recipes train two reward models of our own with a
# Bradley–Terry loss, −log σ(r_chosen − r_rejected), on a MiniLM sentence encoder (shipped inside a PyPI
# wheel). RM_train and RM_test are trained on **disjoint** halves of the pool's human pairs, and neither
# sees a dev or test prompt. The `paper-*` recipes load the real OpenAssistant models instead, through the
# same `score(prompts, responses)` interface.
#
# Below: their held-out pairwise accuracy against the human labels on the test split (Wilson 95% CIs),
# next to a response-length baseline and to the OpenAssistant 6.9B reward model's own accuracy on the same
# pairs (its scores for every test pair ship with the PRO authors' evaluation files), and their agreement
# with that model. The report is also written to `results/<recipe>/reports/reward_models.csv`, from which
# `divscale summarize` takes the accuracies that the README quotes.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%

from divscale.report import plots
from divscale.report import publish as summary
from divscale.study import pipeline

R = pipeline.load(recipe, overrides)
plots.set_style()
rm_train, rm_test = pipeline.reward_models(R)

# %%
report = pipeline.rm_report_table(R)
summary.write_rm_report(R.name, report)
accuracy = plots.rm_plot_frame(report)
accuracy.pivot_table(index="model", columns="subset", values="accuracy").round(3)

# %%
fig = plots.plot_rm_report(accuracy)
plots.save_figure(fig, "reward_models", pipeline.figures_dir(R))

# %% [markdown]
# Where a reward model's CI contains 0.5 it is at chance on that subset (circled in the figure):

# %%
at_chance = accuracy[(accuracy.accuracy_lo <= 0.5) & (accuracy.accuracy_hi >= 0.5)
                     & ~accuracy.model.str.contains("length")]
at_chance[["model", "subset", "accuracy", "accuracy_lo", "accuracy_hi", "n"]].round(3)

# %% [markdown]
# Every metric with its 95% CI: `accuracy` (agreement with the human label), `length_baseline` (the
# longer response wins), `oa_agreement` (prefers the same response as the OpenAssistant 6.9B RM) and
# `oa_accuracy` (that RM's own accuracy on the same pairs, for scale).

# %%
report.round(3)
