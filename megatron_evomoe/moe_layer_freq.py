"""``--moe-layer-freq`` with Megatron-LM's meaning: where the MoE layers go.

Megatron-LM accepts an integer k (layer i, 0-based, is an MoE layer iff ``i % k == 0``) or a Python
list expression of 0/1 per layer, e.g. ``"([0]+[1]*3)*2"`` -> ``[0, 1, 1, 1, 0, 1, 1, 1]`` (1: MoE).
Megatron-LM ``eval``s the string; here only list literals of integers, ``+``, ``*`` and parentheses
are read (``ast``), so a flag value cannot run code. Pure: no megatron-core, no torch.
"""

from __future__ import annotations

import ast
from typing import List, Union

from megatron_evomoe.errors import InputError

LayerFreq = Union[int, List[int]]


def parse_moe_layer_freq(text: Union[str, int, List[int]], flag: str = "--moe-layer-freq") -> LayerFreq:
    """``text`` as Megatron-LM reads it: an int >= 1, or a list of 0/1 (one entry per layer)."""
    if isinstance(text, int):
        value: object = text
    elif isinstance(text, list):
        value = list(text)
    else:
        try:
            value = _evaluate(ast.parse(str(text).strip(), mode="eval").body)
        except (SyntaxError, ValueError) as exc:
            raise InputError(
                f"{flag} {text!r}: expected an integer or a list expression such as \"([0]+[1]*3)*2\" ({exc})"
            ) from None
    if isinstance(value, int):
        if value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
        return value
    if not value or any(entry not in (0, 1) for entry in value):
        raise InputError(f"{flag} {text!r}: a list must hold one 0 (dense) or 1 (MoE) per layer, got {value}")
    return value


def moe_layer_pattern(freq: LayerFreq, num_layers: int, flag: str = "--moe-layer-freq") -> List[bool]:
    """True for the layers (0-based) whose FFN is an MoE layer."""
    if isinstance(freq, int):
        return [i % freq == 0 for i in range(num_layers)]
    if len(freq) != num_layers:
        raise InputError(f"{flag} lists {len(freq)} layers, the model has --num-layers {num_layers}")
    return [bool(entry) for entry in freq]


def _evaluate(node: ast.AST) -> Union[int, List[int]]:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.List):
        items = [_evaluate(element) for element in node.elts]
        if any(not isinstance(item, int) for item in items):
            raise ValueError("list entries must be integers")
        return items
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add):
            if isinstance(left, list) != isinstance(right, list):
                raise ValueError("'+' joins two lists or two integers")
            return left + right
        if isinstance(left, list) and isinstance(right, list):
            raise ValueError("'*' repeats a list an integer number of times")
        return left * right
    raise ValueError(f"unsupported element {ast.unparse(node)!r}")
