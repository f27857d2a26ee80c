"""MoE-aware recomputation with an all-to-all dispatcher (hierarchical, EP 4 on 2 fake nodes x 2).

One MoE layer runs forward + backward without recomputation, with ``--moe-recompute moe_aware`` and
under megatron's full recomputation; each rank asserts that the gradients agree (inside the spawned
processes, see ``tests/moe/recompute_ranks.py``). Here: saved bytes, and which exchanges backward ran.
"""

FORWARD_KINDS = ("counts", "dispatch", "combine")


def test_moe_aware_keeps_fewer_bytes_and_never_reruns_an_all_to_all(world_of_four_report):
    for rank in world_of_four_report:
        none, aware, full = (rank["recompute"][mode] for mode in ("none", "moe_aware", "full"))
        # moe_aware recomputes the router and the experts once per micro-batch in backward, full
        # recomputation too, without recomputation nothing runs again ...
        for mode, again in ((none, 0), (aware, 1), (full, 1)):
            assert (mode["backward_calls"]["router"], mode["backward_calls"]["experts"]) == (again, again)
        # ... but no forward exchange runs again with moe_aware, while full recomputation repeats
        # them (so the counter does see exchanges made in backward)
        assert all(aware["backward_calls"].get(kind, 0) == 0 for kind in FORWARD_KINDS)
        assert all(full["backward_calls"][kind] > 0 for kind in FORWARD_KINDS)
        # backward's own exchanges (the gradients going back) are the same in every mode: one per phase
        for kind in ("dispatch_grad", "combine_grad"):
            assert aware["backward_calls"][kind] == none["backward_calls"][kind] == 3
        assert full["saved_bytes"] < aware["saved_bytes"] < none["saved_bytes"] / 2
        # The paper's mode: full recomputation whose all-to-alls are replayed, not re-run. It keeps
        # the layer input plus both all-to-alls' received tensors: more than full recomputation,
        # and more than moe_aware alone, which keeps the layer input and only the dispatch
        # all-to-all's output (nothing after the combine all-to-all needs its input in backward).
        paper = rank["recompute"]["full_moe_aware"]
        assert (paper["backward_calls"]["router"], paper["backward_calls"]["experts"]) == (1, 1)
        assert all(paper["backward_calls"].get(kind, 0) == 0 for kind in FORWARD_KINDS)
        for kind in ("dispatch_grad", "combine_grad"):
            assert paper["backward_calls"][kind] == none["backward_calls"][kind]
        assert full["saved_bytes"] < aware["saved_bytes"] < paper["saved_bytes"]
