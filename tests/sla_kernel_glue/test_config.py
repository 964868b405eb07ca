import json

import pytest

from sla_kernel_glue import SLAConfig


def test_defaults_match_the_seed_keys():
    c = SLAConfig()
    assert c.to_dict() == {
        "topk": 0.2,
        "blkq": 64,
        "blkk": 64,
        "feature_map": "softmax",
        "tie_feature_map_qk": True,
        "kl": 0.0,
        "linear_scope": "all",
        "backend": "auto",
    }


def test_frozen():
    with pytest.raises(AttributeError):
        SLAConfig().topk = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    "value",
    [
        {"topk": 0.15, "blkq": 32},
        '{"topk": 0.15, "blkq": 32}',
        "{'topk': 0.15, 'blkq': 32}",
        SLAConfig(topk=0.15, blkq=32),
    ],
)
def test_parse_dict_json_and_literal(value):
    c = SLAConfig.parse(value)
    assert (c.topk, c.blkq, c.blkk) == (0.15, 32, 64)


def test_round_trip_through_json():
    c = SLAConfig(topk=0.05, feature_map="elu", kl=0.1, linear_scope="all", backend="torch")
    assert SLAConfig.parse(json.dumps(c.to_dict())) == c


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo pwned')",
        "{'topk': __import__('os').getpid()}",
        "dict(topk=0.1)",
        "[1, 2]",
        "{'topk': 0.1",
    ],
)
def test_parse_never_evaluates_code(text):
    with pytest.raises(ValueError, match="SLA config string"):
        SLAConfig.parse(text)


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"topk": 0}, "topk (0) must be a number in (0, 1]"),
        ({"topk": 1.5}, "topk (1.5) must be a number in (0, 1]"),
        ({"topk": -0.1}, "topk (-0.1) must be a number in (0, 1]"),
        ({"topk": "0.1"}, "topk ('0.1') must be a number in (0, 1]"),
        ({"topk": float("nan")}, "topk (nan) must be a number in (0, 1]"),
        ({"topk": True}, "topk (True) must be a number"),
        ({"blkq": 0}, "blkq (0) must be a positive integer"),
        ({"blkk": -64}, "blkk (-64) must be a positive integer"),
        ({"blkq": 64.0}, "blkq (64.0) must be a positive integer"),
        ({"feature_map": "gelu"}, "feature_map ('gelu') must be one of softmax, elu, relu"),
        ({"tie_feature_map_qk": "yes"}, "tie_feature_map_qk ('yes') must be true or false"),
        ({"kl": 1.0}, "kl (1.0) must be a number in [0, 1)"),
        ({"kl": -0.1}, "kl (-0.1) must be a number in [0, 1)"),
        ({"topk": 0.8, "kl": 0.3}, "topk + kl (0.8 + 0.3) must not exceed 1"),
        ({"linear_scope": "global"}, "linear_scope ('global') must be one of marginal, all, none"),
        ({"backend": "cuda"}, "backend ('cuda') must be one of auto, torch, triton"),
        ({"top_k": 0.1}, "unknown SLA config key 'top_k'"),
    ],
)
def test_every_bad_value_has_its_own_error(values, needle):
    with pytest.raises(ValueError) as info:
        SLAConfig.from_dict(values)
    assert needle in str(info.value)


def test_all_errors_reported_at_once():
    with pytest.raises(ValueError) as info:
        SLAConfig.from_dict({"topk": 2, "blkq": 0, "bogus": 1})
    message = str(info.value)
    assert "topk (2)" in message and "blkq (0)" in message and "'bogus'" in message


@pytest.mark.parametrize(
    "topk, t_n, expected",
    [(0.05, 512, 25), (0.1, 30, 3), (0.29, 100, 29), (0.01, 10, 1), (1.0, 7, 7), (0.5, 1, 1)],
)
def test_critical_block_count(topk, t_n, expected):
    assert SLAConfig(topk=topk).critical_blocks(t_n) == expected


def test_negligible_never_takes_critical_blocks():
    c = SLAConfig(topk=0.5, kl=0.5)
    assert c.critical_blocks(3) == 1 and c.negligible_blocks(3) == 1
    assert SLAConfig(topk=1.0).negligible_blocks(4) == 0


def test_parse_over_a_base_sets_only_the_named_keys():
    base = SLAConfig(topk=0.1, blkq=128, feature_map="elu")
    c = SLAConfig.parse("{'topk': 0.05, 'linear_scope': 'none'}", over=base)
    assert c == base.replace(topk=0.05, linear_scope="none")
    assert SLAConfig.parse({"blkk": 32}, over=base) == base.replace(blkk=32)
    with pytest.raises(ValueError, match="unknown SLA config key 'topq'"):
        SLAConfig.parse({"topq": 0.1}, over=base)
