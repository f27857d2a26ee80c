"""TensorBoard tags: Megatron-LM's names wherever the quantity is the same, so existing dashboards
pick the runs up; ours only for what Megatron-LM does not log.

A logged record (the ``--log-json`` line, whose keys stay as they are for the analysis tools) maps to
scalars as Megatron-LM's ``training_log`` and ``evaluate_and_print_results`` (megatron/training/
training.py) and megatron-core's ``track_moe_metrics`` (transformer/moe/moe_utils.py) write them:

============================  ====================================================================
record key                    TensorBoard tag (step: iteration; ``... vs samples``: consumed samples)
============================  ====================================================================
task metrics (``lm_loss``)    the reported name, ``lm loss`` + ``lm loss vs samples`` (fine-tuning's
                              ``loss`` is ``lm loss``, as Megatron-LM's tasks/finetune_utils.py names it)
``lr``                        ``learning-rate`` + vs samples
``batch_size``                ``batch-size`` + vs samples
``grad_norm``                 ``grad-norm`` + vs samples
``loss_scale``                ``loss-scale`` + vs samples
``num_zeros``/``params_norm`` ``num-zeros`` / ``params-norm`` + vs samples
``elapsed_ms_per_iter``       ``iteration-time`` (seconds, as Megatron-LM's timer)
``val_loss``, ``val_ppl``     ``lm loss validation``, ``lm loss validation ppl`` + vs samples
``val_<metric>``              ``<metric> validation`` + vs samples (``mlm accuracy validation``)
``balance_loss``              ``load_balancing_loss`` (mean over MoE layers) and, with
(``..._per_layer``)           ``--moe-per-layer-logging``, ``moe/load_balancing_loss_layer_<i>``
                              (i: the 0-based decoder layer), divided by the coefficient as
                              megatron-core logs it; only for routers whose balance loss is
                              megatron's (``Router.megatron_loss_names``)
============================  ====================================================================

Everything else keeps its record key: per MoE layer ``name/layer_k`` (k counts MoE layers), nested
dicts ``name/key/...`` (``phase_flops/top1``, ``loss_jump/T_S/eval_loss_jump``), and scalars as they
are (``temperature``, ``aux_loss``, ``tokens_per_sec``, ``flops``, ``skipped_iters``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Tuple

VS_SAMPLES = " vs samples"

MEGATRON_SCALARS = {
    "lr": "learning-rate",
    "batch_size": "batch-size",
    "grad_norm": "grad-norm",
    "loss_scale": "loss-scale",
    "num_zeros": "num-zeros",
    "params_norm": "params-norm",
}
"""Record key -> Megatron-LM's tag, each also written against consumed samples."""

ITERATION_TIME = "iteration-time"

Scalar = Tuple[str, float, int]
"""(tag, value, step)."""


@dataclass(frozen=True)
class TagContext:
    """What a record alone does not say about its tags.

    Attributes:
        main_metric: the reported metric whose mean is ``val_loss`` (``Task.main_metric``).
        metric_renames: record key -> Megatron-LM's name, where a task reports under another name
            (fine-tuning's ``loss`` is Megatron-LM's ``lm loss``).
        moe_layer_numbers: the 0-based decoder layer of each MoE layer, in order (megatron's
            per-layer index).
        megatron_losses: router loss name -> (megatron-core's name, the coefficient the logged value
            carries); from ``Router.megatron_loss_names``.
        per_layer_logging: ``--moe-per-layer-logging``: the per-layer ``moe/..._layer_<i>`` tags.
    """

    main_metric: str = "lm loss"
    metric_renames: Mapping[str, str] = field(default_factory=dict)
    moe_layer_numbers: Tuple[int, ...] = ()
    megatron_losses: Mapping[str, Tuple[str, float]] = field(default_factory=dict)
    per_layer_logging: bool = False

    def metric_name(self, key: str) -> str:
        """The reported name of a task metric's record key (``lm_loss`` -> ``lm loss``): tasks
        report Megatron-style names, words separated by spaces, and records snake-case them."""
        return self.metric_renames.get(key, key.replace("_", " "))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers_in(nested: Dict[str, Any], prefix: str) -> Iterator[Tuple[str, float]]:
    """``(prefix/key/..., number)`` for the numbers of nested dicts; lists inside dicts (the routing
    probe's per-token data) are not scalars and are left out."""
    for key, value in nested.items():
        if is_number(value):
            yield f"{prefix}/{key}", value
        elif isinstance(value, dict):
            yield from _numbers_in(value, f"{prefix}/{key}")


def tensorboard_scalars(record: Dict[str, Any], context: TagContext, metric_keys: Iterable[str] = ()) -> List[Scalar]:
    """The scalars of one record, in record order.

    Args:
        record: a logged record (must hold ``iteration``; ``consumed_samples`` gives the
            ``... vs samples`` tags).
        context: see :class:`TagContext`.
        metric_keys: the record keys that are task metrics (``lm_loss``, ``mlm_accuracy``).
    """
    step = record["iteration"]
    samples = record.get("consumed_samples")
    metrics = set(metric_keys)
    out: List[Scalar] = []

    def megatron(tag: str, value: float) -> None:
        out.append((tag, value, step))
        if samples is not None:
            out.append((tag + VS_SAMPLES, value, samples))

    for key, value in record.items():
        if key == "iteration" or value is None:
            continue
        if key in metrics and is_number(value):
            megatron(context.metric_name(key), value)
        elif key in MEGATRON_SCALARS and is_number(value):
            megatron(MEGATRON_SCALARS[key], value)
        elif key == "elapsed_ms_per_iter" and is_number(value):
            out.append((ITERATION_TIME, value / 1000.0, step))
        elif key.startswith("val_") and is_number(value) and (tag := _validation_tag(key, context, metrics)):
            megatron(tag, value)
        elif (loss := _megatron_loss(key, context)) is not None and (is_number(value) or isinstance(value, list)):
            out.extend(_moe_loss_scalars(key, loss, value, context, step))
        elif is_number(value):
            out.append((key, value, step))
        elif isinstance(value, list) and value and all(is_number(v) for v in value):
            out.extend((f"{key}/layer_{layer}", v, step) for layer, v in enumerate(value))
        elif isinstance(value, dict):
            out.extend((tag, v, step) for tag, v in _numbers_in(value, key))
    return out


def _validation_tag(key: str, context: TagContext, metrics: set) -> str:
    """Megatron-LM's ``<metric> validation`` / ``<metric> validation ppl``, or '' for our own
    (``val_served_loss``)."""
    main = context.metric_name(context.main_metric.replace(" ", "_"))  # fine-tuning's "loss": "lm loss"
    if key == "val_loss":
        return f"{main} validation"
    if key == "val_ppl":
        return f"{main} validation ppl"
    metric = key[len("val_"):]
    return f"{context.metric_name(metric)} validation" if metric in metrics else ""


def _megatron_loss(key: str, context: TagContext):
    """The router loss a key logs, when megatron-core has a name for it: ``balance_loss`` (per MoE
    layer, or already their mean) or ``balance_loss_per_layer``; else None."""
    for suffix in ("_loss", "_loss_per_layer"):
        if key.endswith(suffix) and key[: -len(suffix)] in context.megatron_losses:
            return key[: -len(suffix)]
    return None


def _moe_loss_scalars(key: str, name: str, value, context: TagContext, step: int) -> List[Scalar]:
    """megatron-core's ``<name>`` (mean over MoE layers) and ``moe/<name>_layer_<i>``, without the
    coefficient (megatron-core tracks ``aux_loss / coeff``).

    ``value`` is the per-layer list (``balance_loss``; per-layer tags with ``per_layer_logging``),
    their mean (a number), or, under ``..._per_layer``, the list a record holds only when per-layer
    logging is on.
    """
    tag, coeff = context.megatron_losses[name]
    if is_number(value):
        return [(tag, value / coeff, step)]
    values = [v / coeff for v in value]
    out = [] if key.endswith("_per_layer") else [(tag, sum(values) / max(len(values), 1), step)]
    if context.per_layer_logging or key.endswith("_per_layer"):
        out.extend((f"moe/{tag}_layer_{layer}", v, step) for layer, v in zip(context.moe_layer_numbers, values))
    return out


def tag_context(run, main_metric: str = "lm loss", metric_renames: Mapping[str, str] | None = None) -> TagContext:
    """The :class:`TagContext` of ``run`` (a ``RunConfig``)."""
    model = run.model
    numbers: Tuple[int, ...] = ()
    losses: Mapping[str, Tuple[str, float]] = {}
    if model.num_moe_experts:
        # Imported here: the mapping above stays importable without megatron-core.
        from megatron_evomoe.models.layer_specs import moe_layer_pattern
        from megatron_evomoe.moe.routers import router_class

        numbers = tuple(layer for layer, is_moe in enumerate(moe_layer_pattern(model)) if is_moe)
        losses = router_class(model.moe_router_type).megatron_loss_names(model.moe_router)
    per_layer = bool(run.training.moe_per_layer_logging)
    return TagContext(main_metric, dict(metric_renames or {}), numbers, losses, per_layer)
