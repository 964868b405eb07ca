"""Everything MLflow: the driver's writes and the sweep's review in the MLflow UI.

tags: every MLflow tag name sla-sweep writes or reads; mlflow_log: the experiment, the parent
run and one child run per trial (SweepRecorder); mlflow_buffer: the writes queued, sent in order
and held while a tracking server is away; mlflow_sends: what each queued write becomes in MLflow
and which failures are retried; mlflow_review: the runs-table view, links and the
parent run's summary metrics; model_registry: the best trial as a registered model version;
datasets: the training data as a dataset input; system_metrics: a trial's CPU/GPU/memory
samples, taken on the worker; creds: a tracking URI's credentials kept out of every output.

Import the submodules themselves: this package imports nothing (MLflow is heavy to import).
"""
