"""Bad prompt files and objectives given to `sla-sweep run`: one line naming the file or the
value and what is allowed, exit status 2, before Ray starts, nothing written (no sweep directory,
no cache entry)."""

from __future__ import annotations

import pytest

from tests.bad_specs import run_bad_spec

PROMPTS = "a red square moving right\na blue circle bouncing\n"


@pytest.fixture(autouse=True)
def _stops_before_ray(no_cluster):
    """Every case here must fail before the sweep joins or starts Ray."""


def _refused(tmp_path, pipeline, source, capsys, **kw) -> str:
    status, lines = run_bad_spec(tmp_path, pipeline, source, capsys, **kw)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("sla-sweep: error:")
    return lines[0]


def test_an_empty_prompt_file(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("\n  \n")
    line = _refused(tmp_path, tiny_pipeline_dir, tmp_path / "prompts.txt", capsys,
                    train={"objective": "distill"})  # fmt: skip
    assert f"data.source ({tmp_path / 'prompts.txt'}) holds no prompts" in line


def test_prompts_that_are_not_utf8(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_bytes("a caf\u00e9 at night\n".encode("latin-1"))
    line = _refused(tmp_path, tiny_pipeline_dir, tmp_path / "prompts.txt", capsys,
                    train={"objective": "distill"})  # fmt: skip
    assert "is not UTF-8 text (byte 0xe9 at offset 5)" in line and "prompts.txt" in line


def test_a_yaml_prompt_file_that_is_not_a_list_of_strings(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "prompts.yaml").write_text("prompt: a red square\n")
    line = _refused(tmp_path, tiny_pipeline_dir, tmp_path / "prompts.yaml", capsys,
                    train={"objective": "distill"})  # fmt: skip
    assert "must be a YAML list of non-empty strings" in line


def test_prompts_on_a_preset_without_a_text_encoder(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    line = _refused(tmp_path, tiny_pipeline_dir, tmp_path / "prompts.txt", capsys,
                    train={"objective": "distill"}, model={"preset": "tiny"})  # fmt: skip
    assert "is a prompt file: prompts need a pipeline model with a text encoder" in line
    assert "model 'tiny' has none" in line


def test_a_prompt_file_with_flow_matching(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    line = _refused(tmp_path, tiny_pipeline_dir, tmp_path / "prompts.txt", capsys,
                    train={"objective": "flow_matching"})  # fmt: skip
    assert "is a prompt file, which needs objective distill" in line


def test_a_searched_objective_over_a_prompt_file(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    status, lines = run_bad_spec(
        tmp_path, tiny_pipeline_dir, tmp_path / "prompts.txt", capsys,
        train={"objective": {"grid": ["distill", "flow_matching"]}},
    )  # fmt: skip
    assert status == 2 and "needs objective distill" in "\n".join(lines), lines


def test_flow_weight_without_clips(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    line = _refused(tmp_path, tiny_pipeline_dir, tmp_path / "prompts.txt", capsys,
                    train={"objective": "distill", "flow_weight": 0.5})  # fmt: skip
    assert "train.flow_weight (0.5) needs clips" in line
