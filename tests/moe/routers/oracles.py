"""Shared pieces of the gate tests: a router with known weights, a float64 softmax oracle and the
balanced-assignment optimum."""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from tests.tiny import tiny_run

NUM_TOKENS, NUM_EXPERTS = 48, 4


def router_with_random_gate(cls, *flags):
    """``cls`` on the tiny config, layer 1, gate weights N(0, 1) from seed 0 (confident routing)."""
    router = cls(tiny_run(*flags).model)
    router.set_layer_number(1)
    torch.manual_seed(0)
    router.weight.data.normal_(0.0, 1.0)
    return router


def softmax64(hidden: torch.Tensor, weight: torch.Tensor) -> np.ndarray:
    """Router probabilities ``[T, E]`` computed independently, in numpy float64."""
    logits = hidden.double().numpy() @ weight.double().numpy().T
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def optimum(scores: torch.Tensor) -> float:
    """Best total score with at most ceil(T/E) tokens per expert (scipy's linear_sum_assignment with
    each expert as ceil(T/E) slots): the oracle of balanced assignments."""
    num_tokens, num_experts = scores.shape
    slots = np.repeat(scores.double().numpy(), -(-num_tokens // num_experts), axis=1)  # [T, E*C]
    rows, cols = linear_sum_assignment(slots, maximize=True)
    return float(slots[rows, cols].sum())
