"""The study: the wiring from a recipe to results (pipeline), every cell of the grid through papermill (grid), and
the notebooks' execution and jupytext pairing (notebook_runner)."""
