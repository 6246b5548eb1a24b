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
# # 10 · Planning an annotation budget: how many responses per prompt?
#
# With B annotations (one annotation = one ranked response, spec §2.4) one can rank n responses for ⌊B/n⌋
# prompts. `divscale plan` answers "which n?" for a given prompt pool by chaining the paper's two findings:
# it picks ⌊B/n⌋ prompts from the pool, measures their diversity d, and reads the test reward off the
# per-n line reward = a_n · d + b_n (Figure 4), with a 95% prediction interval (statsmodels OLS,
# `get_prediction(...).summary_frame()`, `obs_ci`). This notebook runs it on an HH-RLHF pool with two fits:
# the study's own (`results/<recipe>/runs.csv`) and the paper's published points. It reads results and trains
# nothing.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"
budget = 480
pool_subset = "harmless-base"
seed = 0

# %%
from divscale import paths
from divscale.io import DataError
from divscale.report import plots
from divscale.study import pipeline
from divscale.tools import annotation_plan as bp

R = pipeline.load(recipe, overrides)
plots.set_style()
pool_file = paths.HH_RLHF_DIR / pool_subset / "test.jsonl.gz"
prompts, pool_description = bp.read_pool(str(pool_file))
tokenizer = pipeline.diversity_tokenizer(R)      # the recipe's diversity tokenizer (offline: SmolLM2's)
print(f"pool: {pool_description}; d measured in {R.diversity.tokenizer} tokens")

# %% [markdown]
# ## The study's fit
#
# Every ok PRO run of the study is one point (each seed separately, so the interval is for one training run),
# and d is in the recipe's diversity tokenizer, the same one the planner measures the pool with.

# %%
runs_csv = pipeline.results_dir(R) / "runs.csv"
try:
    study_fit = bp.results_fit(runs_csv, algo="pro")
except (DataError, FileNotFoundError) as err:   # smoke: one seed, two sizes -> no interval
    study_fit = None
    print(f"no study fit for recipe {R.name}: {err}")
if study_fit is not None:
    study_plan = bp.plan(prompts, budget, study_fit, tokenizer, lengths=study_fit.lengths, seed=seed,
                         tokenizer_name=study_fit.tokenizer)
    print(bp.format_plan(study_plan))

# %% [markdown]
# ## The paper's fit
#
# The paper's d values are in LLaMA-1 tokens. No LLaMA tokenizer is available offline, so here d is measured
# in the recipe's tokenizer and the planner is run with the mismatch allowed: **these numbers put a d on one
# scale into lines fitted on another**, and the output says so in its warnings. They show the mechanics,
# not a prediction; with a LLaMA-1 tokenizer (`--tokenizer PATH`) the mismatch goes away.

# %%
paper_fit = bp.paper_fit("pro")
name, mismatch = bp.resolve_tokenizer(paper_fit, None, allow_mismatch=True)
paper_plan = bp.plan(prompts, budget, paper_fit, tokenizer, seed=seed, tokenizer_name=R.diversity.tokenizer,
                     warnings=mismatch)
print(bp.format_plan(paper_plan))

# %% [markdown]
# ## Over a range of budgets: where does the recommendation change?
# One seeded random draw, nested (the prompts at a smaller budget are among those at a larger one), from the
# smallest subset the longest n allows up to the whole pool at the shortest n. A line fitted on one range of d
# says nothing outside it, so the chart draws only the budgets whose subset's d lies inside the range the fit saw;
# the legend counts the others, and the dashed line is the policy before fine-tuning (05). A vertical line marks
# each budget where the recommended n changes. The paper's fit is not charted: its lines are in LLaMA-token d, and
# this d is in another tokenizer's (the plan above says so); that chart would show the mechanics only.

# %%
import json

fit_for_chart = study_fit if study_fit is not None else paper_fit
label = f"{R.name} study fit" if study_fit is not None else "paper fit (tokenizer mismatch)"
budgets = bp.default_budgets(len(prompts))
table = bp.crossover_table(prompts, fit_for_chart, tokenizer, budgets, lengths=fit_for_chart.lengths, seed=seed)
any_outside = table.groupby("budget")["extrapolated"].transform("any")     # some n's d outside the fit's range
switches = bp.crossovers(table[~any_outside])
initial_file = pipeline.results_dir(R) / "initial_policy.json"
initial = json.loads(initial_file.read_text()) if initial_file.exists() else None
fig = plots.plot_budget_crossover(table, switches, title=f"{label}, HH-RLHF {pool_subset} pool", initial=initial)
_ = plots.save_figure(fig, "budget_crossover", pipeline.figures_dir(R))
for s_ in switches:
    print(f"where every n's d is inside the fit's range, the recommendation changes from n={s_['from_n']} to n={s_['to_n']} between "
          f"budgets {s_['previous_budget']:,} and {s_['budget']:,}")
if not switches:
    print("where every n's d is inside the fit's range, the recommended n does not change")
extrapolated = table.groupby("ranking_len")["extrapolated"].mean()
print("share of budgets whose d is outside the fit's range, per n:", extrapolated.round(2).to_dict())

# %%
paper_table = bp.crossover_table(prompts, paper_fit, tokenizer, budgets, seed=seed)
print("paper fit (d in another tokenizer: mechanics only), recommended n per budget:",
      paper_table.drop_duplicates("budget").set_index("budget")["recommended"].value_counts().to_dict())

# %% [markdown]
# ## What the prediction rests on, and when not to trust it
#
# The planner's number is a straight line evaluated at a d. It is only as good as four assumptions.
# (1) **Reward is linear in d for each n, and the line carries over to your setting.** The lines were fitted
# on one model, training recipe and reward model (the paper: OPT-1.3B, PRO, RM_test = a 6.9B OpenAssistant RM;
# the study: a ~1M-parameter policy and in-project reward models); another model or reward model can have
# other lines, and only the ordering of the lines matters for the recommendation. (2) **d is on the fit's
# scale.** d depends on the tokenizer, N and the exponent; a mismatched tokenizer (as with the paper's fit
# above) makes the prediction meaningless in absolute terms. (3) **Your d lies inside the range the fit saw.**
# Outside it the line is extrapolated (the warnings say where, and the chart leaves those budgets out; the printed
# share says how many they are). (4) **The lines are well determined.** When a line's slope is not
# clearly different from zero (a warning gives its p-value) the prediction rests on its mean level, and when
# the best option's prediction lies inside another option's prediction interval, a single training run can
# easily come out the other way. Treat the recommendation as a hypothesis to check with a small pilot at your
# budget, not as a result.
