import random

import pytest

from skipprune.errors import PlanError
from skipprune.prune.plan import PrunePlan, format_indices, parse_spec


@pytest.mark.parametrize(
    "spec,n,keep_last,expected",
    [
        ("last:3", 12, False, {9, 10, 11}),
        ("last:3", 12, True, {8, 9, 10}),
        ("last:25%", 32, False, set(range(24, 32))),  # 8 layers
        ("last:33%", 12, False, {8, 9, 10, 11}),  # 3.96 -> 4
        ("last:10%", 12, False, {11}),  # 1.2 -> 1
        ("last:1%", 12, False, {11}),  # a non-zero share takes at least one layer
        ("last:0", 12, False, set()),
        ("20-23,5", 32, False, {5, 20, 21, 22, 23}),
        (" 3 ", 4, False, {3}),
        ("last:2,0", 6, False, {0, 4, 5}),
    ],
)
def test_parse_spec(spec, n, keep_last, expected):
    assert parse_spec(spec, n, keep_last) == expected


@pytest.mark.parametrize(
    "spec,message",
    [
        ("abc", "malformed SPEC"),
        ("3-1", "runs backwards"),
        ("12", "out of range"),
        ("last:13", "selects 13 layers"),
        ("last:150%", "more than 100%"),
        ("last:2.5", "malformed"),
        ("1,,2", "malformed"),
        ("", "empty SPEC"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(PlanError, match=message):
        parse_spec(spec, 12)


def test_keep_last_layer_leaves_room_for_final_layer():
    with pytest.raises(PlanError, match="before the final one"):
        parse_spec("last:12", 12, keep_last_layer=True)


def test_numbering_and_round_trip():
    plan = PrunePlan.from_specs(8, drop_attn="last:3", drop_mlp="6-7,1", drop_blocks="2")
    assert plan.dropped_blocks == [2, 6, 7]
    assert [(lyr.output, lyr.source, lyr.attention, lyr.mlp) for lyr in plan.layers] == [
        (0, 0, True, True),
        (1, 1, True, False),
        (2, 3, True, True),
        (3, 4, True, True),
        (4, 5, False, True),
    ]
    assert plan.output_index(5) == 4 and plan.output_index(6) is None
    assert not plan.blocks_only
    assert PrunePlan.from_dict(plan.to_dict()) == plan
    assert "blocks 2,6-7" in plan.describe() and "attention of layer 5;" in plan.describe()
    assert plan.describe().endswith("(source numbering; 5 of 8 layers kept)")


def test_plain_grammar():
    plan = PrunePlan.from_specs(12, drop_attn="9-11", drop_blocks="4")
    assert plan.describe() == "remove block 4; attention of layers 9-11 (source numbering; 11 of 12 layers kept)"
    assert PrunePlan.from_specs(12, drop_mlp="3").describe() == (
        "remove MLP of layer 3 (source numbering; all 12 layers kept)"
    )


def test_keep_last_layer_needs_a_last_spec():
    with pytest.raises(PlanError, match="only moves last:N specs"):
        PrunePlan.from_specs(12, drop_attn="3-5", keep_last_layer=True)
    assert PrunePlan.from_specs(12, drop_attn="last:2,3", keep_last_layer=True).drop_attention == {3, 9, 10}


def test_a_count_larger_than_the_model_suggests_a_share():
    with pytest.raises(PlanError, match=r"selects 25 layers but the source has 12 layers; did you mean last:25%\?"):
        parse_spec("last:25", 12)


def test_format_indices_round_trips_random_sets():
    rng = random.Random(0)
    for _ in range(200):
        s = {i for i in range(40) if rng.random() < 0.3}
        if s:
            assert parse_spec(format_indices(s), 40) == s


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, "empty plan"),
        ({"drop_blocks": "0-3"}, "all 4 blocks"),
        ({"drop_attn": "0-3"}, "attention from every layer"),
        ({"drop_attn": "0-1", "drop_blocks": "2-3"}, "attention from every layer"),
    ],
)
def test_invalid_plans(kwargs, message):
    with pytest.raises(PlanError, match=message):
        PrunePlan.from_specs(4, **kwargs).validate()
