"""sla-sweep's orchestrator: the study (spec, Ray Tune/Train, training recipe, MLflow).

Kept free of heavy imports: import the subpackages you need (orchestrator.recipe, ...).
"""
