"""After the sweep: resolve a target (sweep, checkpoint, export, MLflow run), rebuild the model with
SLA, sample, compare trials with the control, export for stock diffusers.

command: `sla-sweep infer`; compare: `sla-sweep compare`; export: `sla-sweep export`;
pipeline: a pipeline trial's settings and transformer, pipeline_videos: its videos,
pipeline_export: its whole-pipeline export; target, model, samples, options, precision, outputs,
results (what an infer run leaves), export_info (what an export records), errors: what they
share.
"""
