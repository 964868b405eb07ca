"""Every MLflow tag name sla-sweep writes or reads, in one place. Plain strings, no imports: any
layer that names a tag (the report's findings, infer's target lookup, the UI) imports it from here.
"""

# MLflow's own tags
PARENT_TAG = "mlflow.parentRunId"  # a child run's parent (the sweep's run)
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (markdown)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # the UI's "Machine learning" vs "GenAI apps"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # + a view's key: a saved runs-table view
CONTEXT_TAG = "mlflow.data.context"  # the UI shows it beside the dataset ("training")
SOURCE_NAME_TAG = "mlflow.source.name"  # a dataset's source

# A sweep's parent run
SWEEP_TAG = "sla_sweep.sweep_dir"
VERDICT_TAG = "sla_sweep.verdict"  # the parent run's verdict line (and .<key> for its fields)
MODEL_TAG = "sla_sweep.registered_model"  # the parent run's models:/NAME/VERSION

# A trial's child run
TRIAL_TAG = "sla_sweep.trial_id"
ERROR_TAG = "sla_sweep.error"  # why a trial failed
CONFIG_TAG = "sla_sweep.config"  # a child run's config (the same for all its repeats)
SEED_TAG = "sla_sweep.seed"

# A registered model version (with TRIAL_TAG and SWEEP_TAG)
CHECKPOINT_TAG = "sla_sweep.checkpoint"
LEAN_TAG = "sla_sweep.lean"  # "true": the logged files are the whole checkpoint
MODEL_ID_TAG = "sla_sweep.logged_model"  # the logged model's id (sqlite keeps no model_id here)
