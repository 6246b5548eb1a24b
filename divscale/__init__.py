"""divscale: a reproducible companion to Song et al. (2024), "Scaling Data Diversity for
Fine-Tuning Language Models in Human Alignment" (arXiv 2403.11124).

Modules, in the order the data flows (see README):
    paths, io, config   where things live, atomic file I/O, recipes
    data                HH-RLHF -> prompts + responses, PRO format, Ranking, pool/dev/test splits
    grid                nested budgeted subsets, sub-rankings, equal-budget cells
    diversity           the paper's prompt-diversity metric d and other measures
    models, generation  offline model resolution, tiny policies, batched generation
    reward              reward models (RM_train / RM_test)
    rankings            extending pairs to 3-/4-rankings
    pro, train          PRO loss + trainer, SFT / DPO, run directories
    evaluate            test rewards, CIs, win rates, LLM judge
    analysis, plots     OLS reward ~ diversity, tables, figures
    augment, select     diversity-guided augmentation, Deita and other selectors
"""

__version__ = "0.1.0"
