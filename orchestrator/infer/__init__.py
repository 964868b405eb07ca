"""After the sweep: resolve a target (sweep, checkpoint, export, MLflow run), rebuild the model with
SLA, sample, compare trials with the control, export for stock diffusers.

command: `sla-sweep infer`; compare: `sla-sweep compare`; export: `sla-sweep export`;
target, model, samples, options: what they share.
"""
