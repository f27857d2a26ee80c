"""Measurement and analysis: router comparison per FLOP, MoE-layer benchmark, routing plots, model size.

Modules here read ``--log-json`` metrics and configs; the reading and math modules (``run_log``,
``comparison_math``, ``router_suite``, ``comparison_runner``, ``comparison_report``) import neither
torch nor megatron-core, so the tools that only post-process logs start fast.
"""
