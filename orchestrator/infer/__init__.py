"""After the sweep: resolve a target (sweep, checkpoint, export, MLflow run), rebuild the model with
SLA, sample, compare trials with the control, export for stock diffusers.

command: `sla-sweep infer`; compare: `sla-sweep compare`; export: `sla-sweep export`;
pipeline: a pipeline trial's videos and whole-pipeline exports; target, model, samples, options,
outputs, results (what an infer run leaves), export_info (what an export records), errors: what
they share.
"""
