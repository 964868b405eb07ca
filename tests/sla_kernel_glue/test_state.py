"""sla_attention.pt: bit-exact round trip, the version 1 form, and every refusal in one line."""

import logging
import os
import shlex

import pytest
import torch

from sla_kernel_glue import SLAStateError, apply_sla, load_sla_state, read_sla_state, save_sla_state

from .test_injection_wan import SELF_LAYERS, SPARSE, randomize_proj_l, run, tiny_wan, wan_inputs


def injected(seed: int = 0, config=SPARSE):
    model = tiny_wan(seed)
    return model, apply_sla(model, config)


def saved_file(tmp_path):
    model, handle = injected()
    randomize_proj_l(handle)
    return save_sla_state(model, tmp_path), handle


def assert_one_line_naming(exc_info, path):
    message = str(exc_info.value)
    assert str(path) in message and "\n" not in message


def test_round_trip_is_bit_exact_and_keeps_parameter_objects(tmp_path):
    model, handle = injected()
    randomize_proj_l(handle)
    inputs = wan_inputs()
    expected = run(model, inputs)
    path = save_sla_state(model, tmp_path)
    assert path == tmp_path / "sla_attention.pt"
    assert [p.name for p in tmp_path.iterdir()] == ["sla_attention.pt"]  # no temp file left

    data = read_sla_state(path)
    assert data["format"] == "sla_attention" and data["version"] == 3
    assert data["settings"] == SPARSE.to_dict()
    assert sorted(data["layers"]) == SELF_LAYERS
    assert data["layers"]["blocks.0.attn1"]["head_dim"] == 16
    assert data["layers"]["blocks.0.attn1"]["dtype"] == "fp32"  # ran in float32

    fresh, fresh_handle = injected()  # same base weights, fresh (zero) proj_l
    params = {p: s.proj_l.weight for p, s in fresh_handle.layers.items()}
    assert load_sla_state(fresh_handle, tmp_path) is True
    for p, sla in fresh_handle.layers.items():
        assert (
            sla.proj_l.weight is params[p]
        )  # copied in place: optimizers still hold these tensors
        assert torch.equal(sla.proj_l.weight, handle.layers[p].proj_l.weight)
        assert torch.equal(sla.proj_l.bias, handle.layers[p].proj_l.bias)
    assert torch.equal(run(fresh, inputs), expected)


def test_version_1_file_applies_to_every_layer_of_its_head_dim(tmp_path):
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(16, 16, generator=g), torch.randn(16, generator=g)
    other = torch.zeros(16, 16)
    settings = {"topk": 0.5, "blkq": 16, "blkk": 16, "feature_map": "softmax"}
    torch.save(
        {
            "version": 1,
            "settings": settings,
            "state": {
                "16:bf16": {"proj_l.weight": weight, "proj_l.bias": bias},
                "16:fp16": {"proj_l.weight": other, "proj_l.bias": torch.zeros(16)},
            },
        },
        tmp_path / "sla_attention.pt",
    )
    model, handle = injected()
    model.to(torch.bfloat16)  # the layers compute in bf16: the "16:bf16" entry is theirs
    assert load_sla_state(model, tmp_path) is True
    for sla in handle.layers.values():
        assert torch.equal(sla.proj_l.weight, weight) and torch.equal(sla.proj_l.bias, bias)
        assert sla.proj_l.weight.dtype == torch.float32


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    torch.save(
        {"format": "sla_attention", "version": 2, "evil": Payload()}, tmp_path / "sla_attention.pt"
    )
    _, handle = injected()
    with pytest.raises(SLAStateError, match="refused") as exc_info:
        load_sla_state(handle, tmp_path)
    assert_one_line_naming(exc_info, tmp_path / "sla_attention.pt")
    assert not marker.exists()


def test_truncated_file_gives_one_clear_line(tmp_path):
    path, handle = saved_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SLAStateError, match="truncated or corrupt") as exc_info:
        load_sla_state(handle, tmp_path)
    assert_one_line_naming(exc_info, path)


def test_wrong_format_missing_layers_and_shapes_are_refused(tmp_path):
    path, handle = saved_file(tmp_path)
    good = torch.load(path, weights_only=True)

    def write_and_load(data, match):
        torch.save(data, path)
        with pytest.raises(SLAStateError, match=match) as exc_info:
            load_sla_state(handle, tmp_path)
        assert_one_line_naming(exc_info, path)

    write_and_load({**good, "format": "something_else"}, "format is 'something_else'")
    write_and_load({**good, "version": 7}, "version is 7")
    layers = dict(good["layers"])
    del layers["blocks.1.attn1"]
    write_and_load({**good, "layers": layers}, "missing 'blocks.1.attn1'")
    small = {"proj_l.weight": torch.zeros(8, 8), "proj_l.bias": torch.zeros(8)}
    bad = {**good["layers"], "blocks.0.attn1": {"head_dim": 8, "dtype": "fp32", "state": small}}
    write_and_load({**good, "layers": bad}, "head_dim 8, the model's is 16")
    wrong = {**good["layers"]["blocks.0.attn1"], "state": small}
    write_and_load(
        {**good, "layers": {**good["layers"], "blocks.0.attn1": wrong}}, r"shape \(8, 8\)"
    )


def test_nothing_is_loaded_when_one_layer_does_not_fit(tmp_path):
    path, handle = saved_file(tmp_path)
    good = torch.load(path, weights_only=True)
    good["layers"]["blocks.1.attn1"]["head_dim"] = 8
    torch.save(good, path)
    _, fresh = injected()
    with pytest.raises(SLAStateError):
        load_sla_state(fresh, tmp_path)
    assert all(torch.count_nonzero(s.proj_l.weight) == 0 for s in fresh.layers.values())


def test_settings_mismatch_raises_unless_allowed(tmp_path):
    saved_file(tmp_path)
    _, other = injected(config=SPARSE.replace(topk=1.0, feature_map="elu"))
    with pytest.raises(
        SLAStateError, match=r"feature_map \(file 'softmax', running 'elu'\)"
    ) as exc_info:
        load_sla_state(other, tmp_path)
    assert "topk" in str(exc_info.value)
    assert_one_line_naming(exc_info, tmp_path / "sla_attention.pt")
    assert load_sla_state(other, tmp_path, allow_settings_mismatch=True) is True
    # the backend picks a kernel, not the math: a triton-trained file loads for CPU inference
    _, cpu = injected(config=SPARSE.replace(backend="auto"))
    assert load_sla_state(cpu, tmp_path) is True


def test_missing_file_returns_false_with_one_line(tmp_path, caplog):
    _, handle = injected()
    with caplog.at_level(logging.INFO, logger="sla_kernel_glue"):
        assert load_sla_state(handle, tmp_path) is False
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"no sla_attention.pt in {tmp_path}: SLA layers start fresh"]


def test_save_overwrites_atomically_and_requires_sla(tmp_path):
    path, handle = saved_file(tmp_path)
    randomize_proj_l(handle, seed=9)
    save_sla_state(handle, tmp_path)
    data = read_sla_state(path)
    assert torch.equal(
        data["layers"]["blocks.0.attn1"]["state"]["proj_l.weight"],
        handle.layers["blocks.0.attn1"].proj_l.weight,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["sla_attention.pt"]
    handle.remove()
    with pytest.raises(ValueError, match="removed"):
        save_sla_state(handle, tmp_path)
    with pytest.raises(ValueError, match="no SLA injected"):
        save_sla_state(tiny_wan(), tmp_path)
