"""Reward models and what is done with them: RM_train / RM_test (rm), pairs extended to rankings ordered by RM_train
(rankings), and greedy answers scored by a reward model with CIs (evaluate)."""
