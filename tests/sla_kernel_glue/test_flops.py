import pytest

from sla_kernel_glue import SLAConfig, attention_flops


def test_topk_005_at_32k_by_hand():
    # T_n = 32768 / 64 = 512 key blocks; k = floor(0.05 * 512) = floor(25.6) = 25.
    f = attention_flops(2, 16, 32768, 128, SLAConfig(topk=0.05))
    assert f.density == 25 / 512
    dense = 4 * 2 * 16 * 32768**2 * 128
    linear = 6 * 2 * 16 * 32768 * 128**2
    router = 2 * 2 * 16 * 512 * 512 * 128 + 4 * 2 * 16 * 32768 * 128
    assert f.dense == dense
    assert f.sla == pytest.approx(25 / 512 * dense + linear + router)
    # 0.04883 sparse + 0.00586 linear + 0.00015 router, as fractions of dense: 0.05484
    assert f.ratio == pytest.approx(25 / 512 + 6 / (4 * 32768 / 128) + router / dense)
    assert 0.0548 < f.ratio < 0.0549


def test_backward_counts_and_dense_control():
    fwd = attention_flops(1, 1, 4096, 64, SLAConfig(topk=0.1))
    both = attention_flops(1, 1, 4096, 64, SLAConfig(topk=0.1), backward=True)
    assert both.dense == 3.5 * fwd.dense
    assert both.linear == 3 * fwd.linear
    assert both.router == fwd.router
    dense = attention_flops(1, 1, 4096, 64, None)
    assert dense.ratio == 1.0 and dense.density == 1.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"seq_len \(0\) must be a positive integer"):
        attention_flops(1, 1, 0, 64)


def test_sparse_only_has_no_linear_term():
    both = attention_flops(1, 2, 4096, 64, SLAConfig(topk=0.1), backward=True)
    sparse_only = attention_flops(
        1, 2, 4096, 64, SLAConfig(topk=0.1, linear_scope="none"), backward=True
    )
    assert both.linear > 0 and sparse_only.linear == 0
    assert sparse_only.sla == pytest.approx(both.sla - both.linear)


def test_learned_router_and_alpha_mix_by_hand():
    # N 4096 in blocks of 64: T_m = T_n = 64; B 1, H 2, d 64.
    bh, t, d, n = 2, 64, 64, 4096
    fixed = attention_flops(1, 2, n, d, SLAConfig(topk=0.1))
    learned = attention_flops(1, 2, n, d, SLAConfig(topk=0.1, router="learned", mix="alpha"))
    projections = 2 * bh * (t + t) * d**2
    assert learned.router == fixed.router + projections
    assert learned.linear == fixed.linear + 3 * bh * n * d
    assert learned.sparse == fixed.sparse and learned.dense == fixed.dense
    fixed_b = attention_flops(1, 2, n, d, SLAConfig(topk=0.1), backward=True)
    learned_b = attention_flops(1, 2, n, d, SLAConfig(topk=0.1, router="learned"), backward=True)
    assert learned_b.router == fixed_b.router + 2 * projections + 4 * bh * t * t * d
    assert learned_b.linear == fixed_b.linear
