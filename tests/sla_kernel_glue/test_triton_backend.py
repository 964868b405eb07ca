"""unsupported_reason messages and how the backend choice treats them: 'triton' raises, 'auto' falls
back to the reference."""

import pytest
import torch

from sla_kernel_glue import SLAConfig, SparseLinearAttention

pytest.importorskip("triton")


def _reason(shape, dtype=torch.float32, **cfg):
    from sla_kernel_glue.triton_backend import unsupported_reason

    return unsupported_reason(torch.empty(shape, dtype=dtype), SLAConfig(**cfg))


@pytest.mark.parametrize(
    "shape,dtype,cfg,expected",
    [
        ((1, 1, 64, 48), torch.float32, {}, "head dim 48 is not one of 16, 32, 64, 128"),
        ((1, 1, 64, 256), torch.float32, {}, "head dim 256 is not one of"),
        ((1, 1, 64, 64), torch.float64, {}, "dtype torch.float64 is not one of"),
        ((1, 1, 64, 64), torch.float32, {"blkq": 96}, "blkq 96 is not one of 16, 32, 64, 128"),
        ((1, 1, 64, 64), torch.float32, {"blkk": 8}, "blkk 8 is not one of"),
        ((1, 64, 64), torch.float32, {}, "q must be (B, H, N, d), got 3 dimensions"),
    ],
)
def test_unsupported_reason_names_the_value(shape, dtype, cfg, expected):
    assert expected in _reason(shape, dtype, **cfg)


def test_cpu_without_interpreter_is_unsupported():
    reason = _reason((1, 1, 64, 64))
    assert reason is not None and "not CUDA" in reason


def test_backend_triton_raises_and_auto_falls_back_counted():
    q, k, v = torch.randn(3, 1, 2, 40, 48)
    strict = SparseLinearAttention(48, SLAConfig(topk=0.5, blkq=16, blkk=16, backend="triton"))
    with pytest.raises(ValueError, match="SLA backend 'triton' cannot run this call"):
        strict(q, k, v)
    auto = SparseLinearAttention(48, SLAConfig(topk=0.5, blkq=16, blkk=16, backend="auto"))
    out = auto(q, k, v)
    assert auto.backend_calls == {"torch": 1}
    torch_out = SparseLinearAttention(48, SLAConfig(topk=0.5, blkq=16, blkk=16, backend="torch"))(
        q, k, v
    )
    torch.testing.assert_close(out, torch_out)


def test_sla_triton_raises_on_unsupported_call():
    from sla_kernel_glue.triton_backend import sla_triton

    q = torch.randn(1, 1, 32, 48)
    with pytest.raises(ValueError, match="SLA Triton kernels cannot run this call: head dim 48"):
        sla_triton(q, q, q, config=SLAConfig())


def test_dkdv_autotuning_restores_the_gradients_its_second_pass_adds_to():
    # The marginal dK/dV's second pass adds to the dK, dV the first pass stored: autotuning runs
    # it several times, so each run must start again from the stored values.
    from sla_kernel_glue.triton_bwd import _sla_bwd_dkdv_kernel

    assert {"DK", "DV"} <= set(_sla_bwd_dkdv_kernel.restore_value)
