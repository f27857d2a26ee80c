"""--eval-as-served: during EvoMoE's dense DTS phase the validation set is also scored with the routing
the model is served with (Top-1 at the final tau), and training goes on in its own state."""

from tests.distributed import run_ranks

FLAGS = ["--moe-router-type", "dts", "--train-iters", "8", "--evomoe-shared-expert-iters", "1",
         "--dts-anneal-iters", "4", "--eval-iters", "2", "--eval-interval", "2", "--eval-as-served"]


def _served_evaluations() -> dict:
    import json
    import os
    import tempfile

    from megatron_evomoe import initialize
    from megatron_evomoe.moe.evolution import moe_layers
    from megatron_evomoe.moe.router import RoutingState
    from megatron_evomoe.training.loop import evaluate, evaluate_as_served, pretrain, setup_session
    from tests.tiny import tiny_gpt_task, tiny_run

    log = os.path.join(tempfile.mkdtemp(), "log.jsonl")
    run = tiny_run(*FLAGS, "--log-json", log)
    initialize.initialize(run.layout, run.training.seed)
    task = tiny_gpt_task()
    try:
        pretrain(run, task)
        # A fresh session in the dense phase (step 2, tau 2 - 1.7 / 4): served vs an explicit Top-1 state.
        session = setup_session(run, task)
        session.state.iteration = 3
        dense = session.controller.routing_state(2)
        session.controller.apply_state(session.model, dense)
        _, valid, _ = task.build_datasets(run, None)
        current = evaluate(session, task, valid)
        served = evaluate_as_served(session, task, valid, current)
        layers = moe_layers(session.model)
        restored = all(layer.router.routing_state == dense for layer in layers) and not any(
            layer.dense_phase for layer in layers)
        session.controller.apply_state(session.model, RoutingState(iteration=7, phase="top1", temperature=0.3))
        top1 = evaluate(session, task, valid)
    finally:
        initialize.shutdown()
    records = [json.loads(line) for line in open(log)]
    return {"records": [r for r in records if "val_loss" in r], "dense": dense.phase, "current": current,
            "served": served, "top1": top1, "restored": restored}


def test_dense_phase_is_also_scored_as_served():
    result = run_ranks(_served_evaluations, 1)[0]
    assert result["dense"] == "gate_sparsify" and result["restored"]
    assert result["served"]["val_served_loss"] == result["top1"]["val_loss"]  # Top-1 at tau_min
    assert result["served"]["val_served_loss"] != result["current"]["val_loss"]
    by_iteration = {r["iteration"]: r for r in result["records"]}
    assert sorted(by_iteration) == [2, 4, 6, 8]
    # T_S = 1, T_D = 5: steps 1-4 dense (evaluations 2 and 4 differ), then Top-1 at tau_min (served = val).
    for it in (2, 4):
        assert by_iteration[it]["val_served_loss"] != by_iteration[it]["val_loss"]
    for it in (6, 8):
        assert by_iteration[it]["val_served_loss"] == by_iteration[it]["val_loss"]
        assert by_iteration[it]["val_served_ppl"] == by_iteration[it]["val_ppl"]
