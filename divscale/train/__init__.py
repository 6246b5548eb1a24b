"""Training on rankings: the listwise losses (losses), completion log-probabilities with the prompt shared (logprobs),
the Trainer subclasses (trainer, pro) and the run folder around a training run (runs)."""
