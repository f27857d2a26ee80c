"""--moe-layer-freq as Megatron-LM reads it: an int k or a 0/1 list expression, without eval."""

import pytest

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe_layer_freq import moe_layer_pattern, parse_moe_layer_freq


def test_an_integer_puts_an_moe_layer_every_k_layers_from_layer_0():
    assert parse_moe_layer_freq("2") == 2
    assert moe_layer_pattern(2, 5) == [True, False, True, False, True]
    assert moe_layer_pattern(1, 3) == [True, True, True]


def test_a_list_expression_is_megatron_lms_pattern():
    # Megatron-LM's help: "([1]*3+[0]*1)*3" -> [1,1,1,0,1,1,1,0,1,1,1,0]
    assert parse_moe_layer_freq("([1]*3+[0]*1)*3") == [1, 1, 1, 0] * 3
    assert parse_moe_layer_freq("([0]+[1]*3)") == [0, 1, 1, 1]
    assert parse_moe_layer_freq("[0, 1]*2") == [0, 1, 0, 1]
    assert moe_layer_pattern([0, 1, 1, 1], 4) == [False, True, True, True]


@pytest.mark.parametrize("text, message", [
    ("0", ">= 1"),
    ("[0, 2]", "one 0 (dense) or 1 (MoE) per layer"),
    ("__import__('os')", "list expression"),
    ("[1]*[2]", "list expression"),
    ("[1] + 2", "list expression"),
])
def test_bad_values_are_one_line_errors(text, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_moe_layer_freq(text)


def test_a_list_must_cover_every_layer():
    with pytest.raises(InputError, match="lists 3 layers, the model has --num-layers 4"):
        moe_layer_pattern([1, 0, 1], 4)
