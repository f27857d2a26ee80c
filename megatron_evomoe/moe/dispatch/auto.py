"""``auto``: pick the cheapest all-to-all route for every dispatch from the actual token counts.

Counts travel first (through the leaders when there are several nodes, so they cost a few
latency-bound messages), then the α-β model (``cost_model.py``) predicts dispatch+combine of each
route the topology supports for this count matrix, and the cheapest runs. All ranks hold the same
counts and parameters (flags, or ``--moe-a2a-calibrate`` broadcast from EP rank 0), so they agree
without talking. ``comm_log.routes`` counts the choices.
"""

from __future__ import annotations

import torch

from megatron_evomoe.moe.dispatch.calibration import calibrate
from megatron_evomoe.moe.dispatch.cost_model import CostModel, RouteTraffic, cheapest_route
from megatron_evomoe.moe.dispatch.routed import RoutedDispatcher
from megatron_evomoe.moe.dispatch.routes import route_names


class AutoDispatcher(RoutedDispatcher):
    """Runs whichever of alltoall / hierarchical / hierarchical_2d the cost model predicts fastest."""

    def __init__(self, num_local_experts, local_expert_indices, config, pg_collection):
        super().__init__(num_local_experts, local_expert_indices, config, pg_collection)
        options = config.moe_dispatch
        self.cost_model = CostModel.from_options(options)
        if options.calibrate:
            self.cost_model = calibrate(self.ep_group, self.topology, self.cost_model)
        self.traffic = {
            name: RouteTraffic.build(name, self.topology, self.num_experts) for name in self.route_names()
        }
        self.last_costs: dict = {}

    def route_names(self) -> list[str]:
        return route_names(self.topology)

    @property
    def count_exchange(self) -> str:
        return "hierarchical" if self.topology.num_nodes > 1 else "alltoall"

    def select_route(self, counts: torch.Tensor, row_bytes: int, out_row_bytes: int) -> str:
        name, self.last_costs = cheapest_route(self.traffic, counts, row_bytes, out_row_bytes, self.cost_model)
        return name
