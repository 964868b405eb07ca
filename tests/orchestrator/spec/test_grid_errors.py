"""A searched training setting with several bad values: every one is reported, the control's
(the first listed) included, each with its value."""

from __future__ import annotations

import pytest

from orchestrator.spec import SpecError, parse_spec


def test_every_bad_grid_value_is_reported(tmp_path):
    doc = {
        "name": "grid", "model": "tiny", "sla": {"topk": {"grid": [0.1]}},
        "train": {"steps": 1, "lr": {"grid": [-1, 0.1, -2]}, "warmup_steps": {"grid": [0, -3]}},
    }  # fmt: skip
    with pytest.raises(SpecError) as caught:
        parse_spec(doc, cwd=tmp_path, gpus_available=0)
    text = "\n".join(caught.value.errors)
    for value in ("lr (-1)", "lr (-2)", "warmup_steps (-3)"):
        assert value in text, text
    assert text.count("lr (-1)") == 1, text  # the control's problem once, not again per value
