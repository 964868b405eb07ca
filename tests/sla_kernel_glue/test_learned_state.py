"""sla_attention.pt version 3: the learned router and alpha round trip bit for bit; version 1 and 2
files still load for today's settings and are refused, in one line, for a learned config; files
whose learned parts do not fit their settings are refused."""

import os
import shlex

import pytest
import torch
from diffusers import WanTransformer3DModel

from sla_kernel_glue import (
    SLAStateError,
    apply_sla,
    export_base_model,
    load_exported,
    load_sla_state,
    read_sla_state,
    save_sla_state,
)

from .test_injection_wan import SPARSE, randomize_proj_l, run, tiny_wan, wan_inputs
from .test_state import assert_one_line_naming

LEARNED = SPARSE.replace(router="learned", mix="alpha")


def injected(config, seed=0):
    model = tiny_wan(seed)
    return model, apply_sla(model, config)


def randomize_learned(handle, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sla in handle.layers.values():
            for p in (sla.router_q.weight, sla.router_k.weight):
                p.add_(0.5 * torch.randn(p.shape, generator=g))
            sla.alpha.uniform_(0.2, 0.9, generator=g)


def test_learned_parts_round_trip_bit_exact(tmp_path):
    model, handle = injected(LEARNED)
    randomize_proj_l(handle)
    randomize_learned(handle)
    inputs = wan_inputs()
    expected = run(model, inputs)
    path = save_sla_state(model, tmp_path)
    data = read_sla_state(path)
    assert data["version"] == 3
    assert data["settings"]["router"] == "learned" and data["settings"]["mix"] == "alpha"
    state = data["layers"]["blocks.0.attn1"]["state"]
    assert sorted(state) == ["alpha", "proj_l.bias", "proj_l.weight", "router_k.weight",
                             "router_q.weight"]  # fmt: skip
    assert all(t.dtype == torch.float32 for t in state.values())
    fresh, fresh_handle = injected(LEARNED)
    assert load_sla_state(fresh_handle, tmp_path) is True
    for p, sla in fresh_handle.layers.items():
        for key, value in sla.state_dict().items():
            assert torch.equal(value, handle.layers[p].state_dict()[key]), (p, key)
    assert torch.equal(run(fresh, inputs), expected)


def test_todays_files_load_for_todays_settings_and_are_refused_for_learned_ones(tmp_path):
    model, handle = injected(SPARSE)
    randomize_proj_l(handle)
    path = save_sla_state(model, tmp_path)
    data = torch.load(path, weights_only=True)
    assert data["version"] == 3 and "router" not in data["settings"]  # today's settings as before
    torch.save({**data, "version": 2}, path)  # a version 2 file, as written before issue 36
    _, again = injected(SPARSE)
    assert load_sla_state(again, tmp_path) is True
    for p, sla in again.layers.items():
        assert torch.equal(sla.proj_l.weight, handle.layers[p].proj_l.weight)
    _, learned = injected(SPARSE.replace(router="learned"))
    before = {p: s.proj_l.weight.clone() for p, s in learned.layers.items()}
    with pytest.raises(SLAStateError, match="settings differ"):
        load_sla_state(learned, tmp_path)
    with pytest.raises(SLAStateError, match="running config has router 'learned'") as exc_info:
        load_sla_state(learned, tmp_path, allow_settings_mismatch=True)
    assert_one_line_naming(exc_info, path)
    # nothing was loaded: proj_l is still the fresh one
    assert all(torch.equal(s.proj_l.weight, before[p]) for p, s in learned.layers.items())
    v1 = {"version": 1, "settings": SPARSE.to_dict(),
          "state": {"16:fp32": {k: v for k, v in data["layers"]["blocks.0.attn1"]["state"].items()}}}  # fmt: skip
    torch.save(v1, path)
    _, alpha = injected(SPARSE.replace(mix="alpha"))
    with pytest.raises(SLAStateError, match="running config has mix 'alpha'") as exc_info:
        load_sla_state(alpha, tmp_path, allow_settings_mismatch=True)
    assert_one_line_naming(exc_info, path)


def test_learned_parts_that_do_not_fit_the_settings_are_refused(tmp_path):
    model, handle = injected(LEARNED)
    path = save_sla_state(model, tmp_path)
    good = torch.load(path, weights_only=True)
    entry = good["layers"]["blocks.0.attn1"]

    def refused(data, match):
        torch.save(data, path)
        with pytest.raises(SLAStateError, match=match) as exc_info:
            load_sla_state(handle, tmp_path)
        assert_one_line_naming(exc_info, path)

    def with_state(state):
        return {**good, "layers": {**good["layers"], "blocks.0.attn1": {**entry, "state": state}}}

    no_alpha = {k: v for k, v in entry["state"].items() if k != "alpha"}
    refused(with_state(no_alpha), "must hold exactly proj_l.weight, proj_l.bias, router_q")
    refused(with_state({**entry["state"], "alpha": torch.ones(8)}), r"alpha has shape \(8,\)")
    refused(with_state({**entry["state"], "router_q.weight": torch.ones(16, 16, dtype=torch.int64)}),
            "router_q.weight must be a floating-point tensor")  # fmt: skip
    refused({**good, "version": 2}, "a version 2 file holds no learned parts")
    refused({**good, "settings": {**good["settings"], "router": "oracle"}}, "router .'oracle'.")


def test_pickled_code_in_a_learned_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    model, handle = injected(LEARNED)
    path = save_sla_state(model, tmp_path)
    data = torch.load(path, weights_only=True)
    data["layers"]["blocks.0.attn1"]["state"]["alpha"] = Payload()
    torch.save(data, path)
    with pytest.raises(SLAStateError, match="refused") as exc_info:
        load_sla_state(handle, tmp_path)
    assert_one_line_naming(exc_info, path)
    assert not marker.exists()


def test_an_export_carries_the_learned_parts_and_runs_the_hard_top_k(tmp_path):
    model, handle = injected(LEARNED)
    randomize_proj_l(handle)
    randomize_learned(handle)
    inputs = wan_inputs()
    expected = run(model, inputs)
    export_base_model(model, tmp_path)
    loaded, loaded_handle = load_exported(tmp_path, WanTransformer3DModel)
    assert loaded_handle.config == LEARNED
    for p, sla in loaded_handle.layers.items():
        assert torch.equal(sla.alpha, handle.layers[p].alpha)
        assert torch.equal(sla.router_k.weight, handle.layers[p].router_k.weight)
    assert torch.equal(run(loaded, inputs), expected)
