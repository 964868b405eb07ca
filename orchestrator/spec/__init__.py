"""The experiment YAML -> a validated ExperimentSpec, before anything starts (no Ray, no files).

loader: read, override and validate, step by step; sections: the sections that stand alone
and the checks every section uses; schema: the frozen spec dataclasses and the default store;
search: the `sla:` search space; recipe: the `model`/`data`/`train` sections -> TrainConfig.
"""

from orchestrator.spec.loader import SpecError, apply_overrides, load_spec, parse_spec
from orchestrator.spec.schema import ExperimentSpec

__all__ = ["ExperimentSpec", "SpecError", "apply_overrides", "load_spec", "parse_spec"]
