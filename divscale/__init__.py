"""divscale: a reproducible companion to Song et al. (2024), "Scaling Data Diversity for
Fine-Tuning Language Models in Human Alignment" (arXiv 2403.11124).

Sub-packages, in the order the data flows (docs/architecture.md has the picture):

    paths, io, config, provenance   the frame: where things live (and the HH subsets), atomic file I/O, recipes,
                                    run keys and every content hash
    data/      hh (HH-RLHF -> prompt + responses, splits, Ranking, PRO files), formats (one reader for anyone's
               preference data: TRL, NeMo-RL, UltraFeedback, oasst1, ...; ranked, preference, corpora, convert),
               subsets (nested budgeted subsets)
    models/    hub (hub ids, wheels, local folders, safetensors-only loading, sentence embeddings), tiny_gpt (the
               project's small policy), generation (batched greedy / sampled generation)
    metrics/   diversity (the paper's d, the other measures, the one Jaccard), stats (bootstrap, Wilson, t contrasts
               and MDE)
    reward/    rm (RM_train / RM_test), rankings (pairs extended to n-rankings ordered by RM_train),
               evaluate (greedy answers scored by a reward model, win rates, LLM judge; any run folder)
    train/     losses (PRO, Plackett-Luce, all-pairs DPO, LiPO-lambda, SFT), logprobs (completion log-probs, prompt
               shared), options (TRL-named settings, no torch), trainer (RankingConfig, RankingCollator,
               RankingTrainer), runs (a run folder: train, keep a checkpoint, resume), own_data (train --data)
    study/     pipeline (recipe -> results: what the notebooks call), grid (every cell via papermill, locally or
               on Slurm), notebook_runner (execute / sync / check the notebooks)
    report/    analysis (regressions, which contrast fits which comparison, identical arms), plots, publish
               (summary.json, the README block)
    tools/     augment and select (diversity-guided augmentation, Deita and other selectors), annotation_plan
               (the annotation-budget planner), gpu_plan (GPU-hours and memory of a recipe), gpu_check
    cli        the ``divscale`` command
"""

__version__ = "0.1.0"
