"""Data: HH-RLHF read into prompts and responses (hh), anyone's ranked or pairwise data in the formats users have
(formats), and the nested budgeted subsets the study trains on (subsets)."""
