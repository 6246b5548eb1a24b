"""Reporting: regressions, contrasts and power (analysis), figures (plots), summary.json and the README block
(publish)."""
