"""Training on rankings: every loss (losses), completion log-probabilities with the prompt shared (logprobs), the
settings in TRL's names, importable without torch (options), the one ranking trainer with its collator and callbacks
(trainer), the run folder around a training run (runs) and ``divscale train --data`` (own_data)."""
