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
# # 05 · Spending a fixed annotation budget: more prompts or more responses?
#
# The paper's Table 1 (spec §4.3) trains on every (n, #prompts) cell and compares the **equal-budget
# diagonals**: with B annotations one can label B/2 prompts with 2 responses, B/3 with 3 or B/4 with 4.
# Its finding: *at an equal budget, fewer prompts with longer rankings give a higher test reward* (n = 4
# beats n = 2 in every row of Table 1; its effect sizes are printed below from `divscale/paper_data`).
#
# Here every cell was trained with several seeds (`divscale grid`, which runs `04_finetune` per cell).
# Rewards are ×100 (100 · mean sigmoid of the RM_test logit, in [0, 100]). Cell means carry a 95% interval
# over seeds computed on the logit scale, so it stays inside [0, 100]. The equal-budget cells have
# *different prompts* (k = B/n), so their runs are independent: each contrast is tested in one OLS model
# over all runs of the algorithm (residual variance pooled over the cells), with Welch's t beside it, and
# reports its minimum detectable effect (MDE, 80% power at α = 0.05). The verdicts, printed from code, say
# in which direction every estimate points and whether an effect of the paper's size could have been seen.

# %% tags=["parameters"]
recipe = "cpu"
overrides = "{}"

# %%
import pandas as pd

from divscale.report import analysis, plots
from divscale.report import publish as summary
from divscale.study import pipeline

R = pipeline.load(recipe, overrides)
plots.set_style()
results = pipeline.results(R)
results.groupby(["algo", "ranking_len", "n_prompts"]).size().unstack("n_prompts")

# %% [markdown]
# ## Reward (RM_test, ×100) per cell: mean, bounded 95% interval, SD and range over seeds

# %%
print(analysis.CELL_CI_METHOD)
tables = {algo: analysis.equal_budget_table(results[results.algo == algo], R.grid.equal_budgets)
          for algo in sorted(results.algo.unique())}
pd.concat(tables, names=["algo"]).round(2)

# %%
lo, hi = analysis.paper_effect_range()
print(f"the paper's n=4 − n=2 effects (Table 1, OPT-1.3B, Global, PRO and SFT, both budgets): {lo:+.2f} to {hi:+.2f}")
spread = analysis.cell_spread(results)
if spread is None:
    print("one seed per cell: no seed-to-seed spread to report")
else:
    print(f"largest seed range of one cell: {spread['max_range']:.1f} points (SD {spread['sd_of_that_cell']:.1f}), "
          f"cell {spread['cell']}; seed SD pooled over cells: "
          + ", ".join(f"{a.upper()} {analysis.pooled_seed_sd(g):.1f}" for a, g in results.groupby("algo")))

# %%
for algo, df in results.groupby("algo"):
    fig = plots.plot_allocation(df, R.grid.equal_budgets, algo=algo)
    plots.save_figure(fig, f"allocation_{algo}", pipeline.figures_dir(R))

# %% [markdown]
# For reference, the policy before any fine-tuning (same test prompts, same RM_test):

# %%
initial = pipeline.initial_policy_reward(R)
summary.write_initial_policy(R.name, initial)       # results/<recipe>/initial_policy.json, read by summarize
print(f"initial policy: {initial['reward_global']:.2f} (95% CI {initial['ci'][0]:.2f}-{initial['ci'][1]:.2f}); "
      f"fine-tuned runs: mean {results.reward_global.mean():.2f}, range {results.reward_global.min():.2f}-"
      f"{results.reward_global.max():.2f}")

# %% [markdown]
# ## Does fine-tuning help?
#
# Every fine-tuned run of the grid against the policy before fine-tuning, on the same test prompts: the mean
# difference with a one-sample t interval over runs (the test set held fixed, as in every seed CI here). A
# design that lowered the variance by not training would show up here as a difference near 0.

# %%
gain = summary.fine_tuned_vs_initial(results, initial)
for algo, c in gain.items():
    print(f"{algo.upper()}: fine-tuned − initial {c['estimate']:+.2f} (95% CI {c['ci_lo']:+.2f} to {c['ci_hi']:+.2f}, "
          f"MDE {c['mde']:.2f}, {c['n_a']} runs): {c['direction']}, {c['status']}")

# %% [markdown]
# ## Where the variance comes from
#
# Three sources, measured: the test prompts (one run's bootstrap SE), the training seed (its data order: the
# SD between seeds of one cell, pooled over cells), and what the seed changes in the policy's answers. The
# tiny policy answers in a few recurring patterns; RM_test scores its very short answers (at most
# `pipeline.SHORT_ANSWER_CHARS` characters, e.g. "I’s.") well above its long, looping ones. After a shorter
# warm-up a run's reward followed how often it answered tersely; the correlation printed below (within cells:
# each run minus its cell mean) says how much of that link is left in this profile.

# %%
sources = pd.DataFrame(analysis.variance_sources(results)).T
print(sources.round(3).to_string())
for algo, v in sources.iterrows():
    v = v.reindex(["eval_se", "seed_sd", "short_answer_r", "short_answer_r2"])      # NaN where not measurable
    print(f"{algo.upper()}: one run's SE over test prompts {v.eval_se:.2f} vs seed SD {v.seed_sd:.2f}; the share of "
          f"very short answers accounts for {100 * v.short_answer_r2:.0f}% of the within-cell variance "
          f"(r = {v.short_answer_r:+.2f})")

# %%
fig = plots.plot_short_answers(results)
plots.save_figure(fig, "variance_short_answers", pipeline.figures_dir(R))

# %% [markdown]
# ## The verdict, per algorithm and budget
#
# One row per contrast: the OLS estimate with its CI and MDE, Welch's t on the two cells alone, and the OLS
# estimate with the seeds as blocks (every seed starts from the same weights and seeded data-order generator in
# every cell, so a seed that scores high in one cell may score high in all; `seed_block_p` tests whether it does).

# %%
rows, sentences = [], []
for algo, sub in results.groupby("algo"):
    for budget in R.grid.equal_budgets:
        ols = analysis.more_responses_beat_more_prompts(sub, budget, method="ols")
        welch = analysis.more_responses_beat_more_prompts(sub, budget, method="welch")
        sentences.append(f"{algo.upper()}: {ols['verdict']}")
        for n in (4, 3):
            c, w = ols[f"contrast_{n}_vs_2"], welch[f"contrast_{n}_vs_2"]
            if c is not None:
                b = analysis.seed_blocked_contrast(sub, (n, budget // n), (2, budget // 2))
                rows.append({"algo": algo, "budget": budget, "comparison": f"n={n} − n=2",
                             "estimate": c["estimate"], "ci_lo": c["ci_lo"], "ci_hi": c["ci_hi"], "mde": c["mde"],
                             "df": c["df"], "direction": c["direction"], "welch_ci_lo": w["ci_lo"],
                             "welch_ci_hi": w["ci_hi"], "welch_mde": w["mde"], "blocked_estimate": b["estimate"],
                             "blocked_ci_lo": b["ci_lo"], "blocked_ci_hi": b["ci_hi"], "blocked_mde": b["mde"],
                             "seed_block_p": b.get("seed_block_p")})
pd.DataFrame(rows).round(2)

# %%
for line in sentences:
    print(line)

# %% [markdown]
# ## n = 4 against n = 2 on the *same* prompts
#
# Not an equal budget (n = 4 costs twice the responses), but the cleanest test of longer rankings: at one
# k the runs of a seed share the prompts and their order, so they are paired by seed.

# %%
same = [analysis.same_prompts_contrast(sub, int(k)) | {"algo": algo}
        for algo, sub in results.groupby("algo") for k in sorted(sub.n_prompts.unique())]
pd.DataFrame(same)[["algo", "n_prompts", "comparison", "estimate", "ci_lo", "ci_hi", "mde", "test",
                    "direction"]].round(2)

# %% [markdown]
# ## Beside the paper's Table 1
#
# Absolute rewards are not comparable (different policy, reward models and scale); the *pattern* along
# the equal-budget diagonal is.

# %%
analysis.beside_paper(tables.get("pro", next(iter(tables.values()))), algo="pro").round(2)

# %% [markdown]
# ## What PRO's loss does: the ranking term against the SFT term
#
# PRO's loss (spec §3.3) is the ranking term (n − 1 softmax terms over the remaining candidates) plus
# β · L_SFT on the best response, with β = `sft_weight` · (n − 1)², the paper's weighting. On a
# token-summed NLL the SFT term can dominate. Each PRO run measures, every few steps on one micro-batch,
# the gradient norm of each term and its share of their sum (`grad_share_rank` + `grad_share_sft` = 1),
# and the cosine between the two gradients. A ranking share near 0 means PRO at that n is doing SFT on
# the top-1 response.

# %%
balance = pipeline.loss_balance(results)
if balance.empty:
    print("no PRO run of this table carries loss-balance measurements (runs from before they were logged)")
else:
    by_n = balance.groupby("ranking_len")[["mean_loss_pro", "mean_loss_sft_weighted", "mean_grad_share_rank",
                                          "mean_grad_share_sft", "mean_grad_cos_rank_sft"]].mean()
    print(by_n.round(3).to_string())
    for n, r in by_n.iterrows():
        print(f"n={n}: the ranking term carries {100 * r.mean_grad_share_rank:.0f}% of the gradient norm, "
              f"β·SFT {100 * r.mean_grad_share_sft:.0f}% (cosine between them {r.mean_grad_cos_rank_sft:+.2f})")

# %% [markdown]
# ## PRO's β ablation: is PRO at n = 4 learning the ranking or doing SFT on the top-1?
#
# PRO at the equal-budget cells with `sft_weight` 0 (the ranking term alone), one value between and the paper's
# 0.05 (β = `sft_weight`·(n − 1)², 0.45 at n = 4), beside SFT on the same prompts. Runs of one seed share
# the prompts, their order and the initial weights, so the contrasts are paired by seed. If the paper's β
# scores like SFT and unlike β = 0, and its ranking term carries little of the gradient, PRO at that n is
# SFT on the top-1 response in practice.

# %%
beta = summary.beta_ablation_summary(pipeline.results_dir(R), results, R.grid.equal_budgets)
if beta is None:
    print("no β ablation in this recipe (grid.beta_ablation is empty)")
else:
    arms = pd.DataFrame([{"cell": key, "arm": arm} | a for key, cell in beta["cells"].items()
                         for arm, a in cell["arms"].items()])
    print(arms.round(3).to_string(index=False))
    for key, cell in beta["cells"].items():
        for name, c in cell["contrasts"].items():
            print(f"{key}: sft_weight {name}: {c['estimate']:+.2f} (95% CI {c['ci_lo']:+.2f} to {c['ci_hi']:+.2f}, "
                  f"MDE {c['mde']:.2f}, {c['test']})")

# %%
if beta is not None:
    fig = plots.plot_beta_ablation(beta)
    plots.save_figure(fig, "beta_ablation", pipeline.figures_dir(R))
