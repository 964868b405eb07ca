"""What a sweep found, for people: the results table, results.csv and the Pareto plot (table), the
verdict over repeats (findings), and the study report with its figures and samples (study,
samples). Shared by all of them: the configs' labels (labels), the Pareto front and the one
pareto.png writer (pareto), matplotlib written to files (figures).

Import the submodules themselves: this package imports nothing.
"""
