"""What a sweep found, for people: the results table, results.csv and the Pareto plot (table), the
verdict over repeats (findings), and the study report with its figures and samples (study,
samples).

Import the submodules themselves: this package imports nothing.
"""
