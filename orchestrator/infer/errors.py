"""The one error of infer, compare and export: plain Python, so that light modules can raise it."""


class InferenceError(ValueError):
    """The target cannot be loaded for inference; the message says why and what to do."""
