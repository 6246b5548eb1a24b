"""Data: HH-RLHF read into prompts and responses (hh), anyone's preference data in the formats users have (formats:
one reader and its dispatch; ranked: the canonical ranked format; preference: TRL's formats, HH and NeMo-RL;
corpora: PRO, UltraFeedback, oasst1, divscale Rankings; convert: rankings to TRL pairs and back), and the nested
budgeted subsets the study trains on (subsets)."""
