"""The sweep on Ray: cluster (start or join Ray), reachable (check addresses before starting),
driver (the store lock and signals), run (run/resume a sweep end to end), tune_setup (what Tune
gets: trainable, settings, callbacks), finish (the table, report and MLflow summary at the end),
search_space (the spec's space -> Tune's param space), trainable (the Tune trial), worker (the
Ray Train worker running the recipe), progress (the driver's Tune callback), commands (`run`,
`resume`, `best`).

The sweep directory's files are in orchestrator.storage, MLflow in orchestrator.tracking, the
results table and study report in orchestrator.report. Import the submodules themselves: this
package imports nothing.
"""
