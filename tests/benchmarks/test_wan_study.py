"""benchmarks.wan_study at the tiny size on the CPU: its inputs pass the checks a user's pipeline
and clips pass, the whole study (sweep, best, infer SLA and dense, export, stock load) runs
through the real commands, and `summarize` rebuilds a cut run's summary from its files (the
H100 run at full size is in docs/benchmarks.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import wan_study, wan_study_inputs, wan_study_summary
from benchmarks.full_shape_models import TINY
from orchestrator.data.videos import scan_folder
from orchestrator.models.pipeline import read_pipeline
from tests.paths import REPO

H100_RUN = REPO / "docs" / "results" / "2026-12-07-h100-wan-study"
H100_RUN_2 = REPO / "docs" / "results" / "2026-12-08-h100-wan-study"


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wan_study") / "work"
    assert wan_study.main(["inputs", "--work", str(work), "--tiny", "--device", "cpu"]) == 0
    return work


def test_inputs_are_a_pipeline_and_a_clip_folder_the_sweep_accepts(tiny_inputs):
    info = read_pipeline(tiny_inputs / "pipeline")  # raises with every problem it finds
    assert info.pipeline_class == "WanPipeline" and info.max_text_len == TINY.text_len
    assert info.text_dim == TINY.transformer["text_dim"] and info.z_dim == TINY.vae["z_dim"]
    count, frames, (height, width) = wan_study_inputs.CLIPS["tiny"]
    clips, notes = scan_folder(tiny_inputs / "clips", frames=frames, fps=16)
    assert len(clips) == count and not notes
    assert len({c.caption for c in clips}) == count  # every clip its own caption
    written = json.loads((tiny_inputs / "inputs.json").read_text())
    assert written["clips"]["size"] == [height, width] and written["pipeline"]["bytes"] > 0


def test_inputs_refuse_an_existing_work_folder(tiny_inputs):
    with pytest.raises(FileExistsError, match="already exists"):
        wan_study_inputs.write_clips(tiny_inputs / "clips", count=1, frames=5, size=(16, 16))


@pytest.mark.slow
def test_the_whole_study_runs_through_the_users_commands(tiny_inputs, tmp_path):
    out = tmp_path / "out"
    argv = ["run", "--work", str(tiny_inputs), "--out", str(out), "--tiny"]
    assert wan_study.main([*argv, "--phases", "sweep", "use", "lora"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    commands = ["sweep", "best", "infer_sla", "infer_dense", "export", "stock_load", "sweep_lora"]
    assert list(summary["commands"]) == commands
    assert all(summary["commands"][c]["rc"] == 0 for c in commands)
    assert set(summary["configs"]) == {"topk=0.5", "control"}
    for config in summary["configs"].values():
        assert config["perf/checkpoint_s"] > 0 and config["perf/checkpoint_bytes"] > 0
        assert config["perf/validation_generate_s"] > 0 and config["perf/step_s"] > 0
    assert summary["sweep_timings"]["encode_s"] > 0
    for attention in ("sla", "dense"):
        infer = summary[f"infer_{attention}"]
        assert len(infer["per_video"]) == 2 and infer["precision"] == "fp32"
    stock = (out / "stock_load.log").read_text()
    assert '"finite": true' in stock and "WanTransformer3DModel" in stock
    # the LoRA sweep: two adapter trials at once (max_concurrent_trials 2), each measured
    lora = summary["lora"]
    assert set(lora["configs"]) == {"topk=0.5", "topk=0.25"} and len(lora["trial_spans"]) == 2
    full_bytes = summary["configs"]["control"]["perf/checkpoint_bytes"]
    for config in lora["configs"].values():
        assert 0 < config["perf/checkpoint_bytes"] < full_bytes
    assert lora["trials_ran_together_s"] > 0


def test_summarize_rebuilds_a_cut_runs_summary(tmp_path):
    """The H100 run was cut during the dense infer: its summary comes from its files alone."""
    out = tmp_path / "cut"
    shutil.copytree(H100_RUN, out)
    (out / "summary.json").unlink()
    summary = wan_study_summary.summarize(out)
    assert summary["commands"]["infer_dense"] == "cut short"
    assert summary["commands"]["sweep"]["rc"] == 0
    for phase in ("sweep", "sweep_encode", "sweep_after_encode", "infer_sla"):
        assert 0 <= summary["gpu"][phase]["busy_share"] <= 1 and summary["gpu"][phase]["samples"]
    timings = summary["sweep_timings"]
    assert summary["gpu"]["sweep_encode"]["seconds"] == pytest.approx(timings["encode_s"])
    # the first step's extra is the step 0 -> step 1 interval less the steady step time
    lines = [ln.split() for ln in (out / "sweep.log").read_text().splitlines()]
    stamp = {(w[3], w[5]): float(w[0]) for w in lines if w[1:3] == ["[sla-sweep]", "trial"]
             and len(w) > 5 and w[4] == "step" and w[5] in ("0", "1")}  # fmt: skip
    control = next(w[3] for w in lines if "control" in w and "started:" in w)
    step_s = summary["configs"]["control"]["perf/step_s"]
    expected = stamp[(control, "1")] - stamp[(control, "0")] - step_s
    assert summary["first_step_extra_s"]["control"] == pytest.approx(expected)
    for config, row in summary["projected_1000_steps_as_shipped"].items():
        fixed = sum(v for k, v in row.items() if k not in ("training_s", "fixed_share"))
        assert row["training_s"] == pytest.approx(1000 * summary["configs"][config]["perf/step_s"])
        assert row["fixed_share"] == pytest.approx(fixed / (fixed + row["training_s"]))


def test_summarize_reads_a_lora_sweep_cut_short(tmp_path):
    """The second H100 run was cut during its LoRA sweep: the two trials' spans come from the
    stamped log alone, and they overlap (two trials on one GPU at once)."""
    out = tmp_path / "cut"
    shutil.copytree(H100_RUN_2, out)
    (out / "summary.json").unlink()
    summary = wan_study_summary.summarize(out)
    assert summary["commands"]["sweep_lora"] == "cut short" and "configs" not in summary["lora"]
    spans = summary["lora"]["trial_spans"]
    assert len(spans) == 2 and all(first < last for first, last in spans.values())
    expected = min(last for _, last in spans.values()) - max(first for first, _ in spans.values())
    assert summary["lora"]["trials_ran_together_s"] == pytest.approx(expected) and expected > 0
    for attention in ("sla", "dense"):
        assert summary[f"infer_{attention}"]["precision"] == "bf16"
        assert len(summary[f"infer_{attention}"]["per_video"]) == 2
