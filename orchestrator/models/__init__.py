"""Video diffusion transformers for the recipe: diffusers WanTransformer3DModel presets."""

from .wan_presets import (
    PRESETS,
    ModelShape,
    WanPreset,
    build_preset,
    load_local,
    model_source_error,
)

__all__ = ["PRESETS", "ModelShape", "WanPreset", "build_preset", "load_local", "model_source_error"]
