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
# Below: their held-out pairwise accuracy against the human labels on the test split (95% CIs), next to
# a response-length baseline, and their agreement with the OpenAssistant 6.9B reward model, whose scores
# for every test pair ship with the PRO authors' evaluation files.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import pandas as pd

from divscale import pipeline, plots

R = pipeline.load(recipe, overrides)
plots.set_style()
rm_train, rm_test = pipeline.reward_models(R)

# %%
report = pipeline.rm_report_table(R)
accuracy = pipeline.rm_accuracy_frame(report)
accuracy.pivot_table(index="model", columns="subset", values="accuracy").round(3)

# %%
fig = plots.plot_rm_report(accuracy)
plots.save_figure(fig, "reward_models", pipeline.figures_dir(R))

# %% [markdown]
# Every metric with its 95% CI: `accuracy` (agreement with the human label), `length_baseline` (the
# longer response wins), `oa_agreement` (prefers the same response as the OpenAssistant 6.9B RM) and
# `oa_accuracy` (that RM's own accuracy on the same pairs, for scale).

# %%
report.round(3)
