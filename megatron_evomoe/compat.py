"""The only place that adapts megatron-core's CUDA assumptions to CPU/gloo.

megatron-core 0.16.1 hard-codes CUDA in a handful of modules (``device="cuda"`` tensor factories,
``torch.cuda.current_device()``, the CUDA RNG, ``param.type() == 'torch.cuda.FloatTensor'`` checks).
``../shared/MEGATRON_CPU.md`` lists each site. Rather than scattering ``if cuda`` checks, this module:

* redirects the ``torch`` global of exactly the affected megatron modules to :class:`_CpuTorch`, a
  proxy whose tensor factories map any CUDA device to the CPU and whose ``torch.cuda`` namespace
  answers with CPU equivalents (current device, RNG, no-op synchronize);
* points megatron's CUDA RNG helpers at the CPU generator, so its RNG tracker and activation
  checkpointing keep working;
* swaps the two gradient-clipping helpers that assert CUDA tensor types for CPU versions;
* lets the async checkpoint writer copy tensors with ``non_blocking=False`` (no CUDA stream to wait on);
* (every device) keeps the checkpoint writer's helper processes tied to the trainer: no
  multiprocessing manager, and writer processes that die with the trainer (:func:`die_with_parent`);
* lets the pipeline's first/last-stage embedding tie keep its weight on the CPU;
* keeps freed CPU memory in the process (:func:`_keep_freed_cpu_memory`), as a GPU caching
  allocator does, instead of glibc's returning it to the OS after every step;
* offers :func:`cuda_type_names`, a context manager used only around optimizer construction, where
  megatron dispatches on ``param.type()`` strings;
* lets the BERT LM head take a norm that supports sequence parallelism (:func:`bert_lm_head_norm`).

It imports nothing of this repository: the modules that need an adaptation call it (``initialize``,
``training/optimizer``, ``training/data_loading``, ``models/bert``, ``analysis/megatron_moe``); whether
the run is on CUDA, and whether torch's grouped GEMM runs on it, is ``device.py``'s answer.

:func:`apply_megatron_fixes` holds the fixes for megatron bugs that also hit a GPU without
Transformer Engine; it runs on every device. Everything is idempotent.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import importlib
import multiprocessing
import os
import queue
import signal
import sys
from typing import Any, Iterator

import torch

# Modules whose `torch` global is replaced by the CPU proxy (each holds a CUDA-only site).
_PROXIED_MODULES = (
    "megatron.core.utils",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.transformer.moe.moe_utils",
    "megatron.core.dist_checkpointing.strategies.torch",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.async_utils",
)

_TENSOR_FACTORIES = frozenset(
    {"tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint", "eye",
     "as_tensor", "zeros_like", "ones_like", "empty_like", "full_like"}
)

_STATE = {"cpu_applied": False, "fixes_applied": False, "malloc_tuned": False}



def _to_cpu_device(device: Any) -> Any:
    if device is None:
        return None
    if isinstance(device, int):
        return "cpu"
    if isinstance(device, torch.device):
        return torch.device("cpu") if device.type == "cuda" else device
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    return device


def _cpu_factory(factory):
    def wrapped(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        kwargs.pop("pin_memory", None)
        return factory(*args, **kwargs)

    wrapped.__name__ = getattr(factory, "__name__", "factory")
    return wrapped


class _NoOpStream:
    """Stands in for a CUDA stream: work on the CPU is already ordered."""

    def wait_stream(self, _other) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def record_event(self, *_args, **_kwargs) -> None:
        return None


class _CpuCuda:
    """The ``torch.cuda`` namespace as seen by proxied megatron modules on a CPU machine."""

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def synchronize(*_args, **_kwargs) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def get_rng_state(*_args, **_kwargs) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, *_args, **_kwargs) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def Stream(*_args, **_kwargs) -> _NoOpStream:  # noqa: N802 (mirrors torch.cuda.Stream)
        return _NoOpStream()

    @staticmethod
    def current_stream(*_args, **_kwargs) -> _NoOpStream:
        return _NoOpStream()

    @staticmethod
    def default_stream(*_args, **_kwargs) -> _NoOpStream:
        return _NoOpStream()

    @staticmethod
    def stream(_stream) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @staticmethod
    def memory_allocated(*_args, **_kwargs) -> int:
        return 0

    @staticmethod
    def max_memory_allocated(*_args, **_kwargs) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class _CpuTorch:
    """A stand-in for the ``torch`` module whose CUDA tensor factories land on the CPU."""

    cuda = _CpuCuda()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(torch, name)
        if name in _TENSOR_FACTORIES:
            return _cpu_factory(attr)
        return attr


@contextlib.contextmanager
def cuda_type_names() -> Iterator[None]:
    """Make ``Tensor.type()`` report ``torch.cuda.*`` names for CPU tensors, temporarily.

    megatron's optimizers sort parameters by these strings when they are built. Only wrap optimizer
    construction: left on globally it would mislabel tensors. A no-op unless
    :func:`apply_cpu_adaptations` ran (a CUDA run's parameters report CUDA names already).
    """
    if not _STATE["cpu_applied"]:
        yield
        return
    original = torch.Tensor.type

    def type_as_cuda(self, *args, **kwargs):
        if args or kwargs:
            return original(self, *args, **kwargs)
        name = original(self)
        return name.replace("torch.", "torch.cuda.", 1) if not self.is_cuda else name

    torch.Tensor.type = type_as_cuda
    try:
        yield
    finally:
        torch.Tensor.type = original


def _cpu_clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """CPU twin of megatron's ``clip_grad_by_total_norm_fp32`` (which asserts CUDA tensors)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = []
    for param in parameters:
        grad = param.decoupled_grad if use_decoupled_grad else param.grad
        if grad is not None:
            grads.append(grad.detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


@contextlib.contextmanager
def _tensor_cuda_is_identity() -> Iterator[None]:
    """Within the block, ``tensor.cuda()`` returns the tensor itself (it stays on the CPU)."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def _keep_cuda_calls_on_cpu(owner: Any, name: str) -> None:
    """Run ``owner.name`` with ``tensor.cuda()`` returning the tensor itself."""
    original = getattr(owner, name)
    if getattr(original, "_evomoe_cpu", False):
        return

    @functools.wraps(original)
    def on_cpu(*args, **kwargs):
        with _tensor_cuda_is_identity():
            return original(*args, **kwargs)

    on_cpu._evomoe_cpu = True
    setattr(owner, name, on_cpu)


def _patch_cuda_moves() -> None:
    """Methods that move a tensor with ``.cuda()`` before a collective."""
    from megatron.core.models.common.language_module.language_module import LanguageModule
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    # The first/last-stage embedding tie, before its all-reduce.
    _keep_cuda_calls_on_cpu(LanguageModule, "setup_embeddings_and_output_layer")
    # The distributed optimizer's gather of its shards (checkpoints in the fully_reshardable format).
    _keep_cuda_calls_on_cpu(DistributedOptimizer, "get_parameter_state_dp_zero")


def _patch_cpu_rng() -> None:
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)


def _patch_checkpoint_writer() -> None:
    fsa = importlib.import_module("megatron.core.dist_checkpointing.strategies.filesystem_async")
    writer = fsa.FileSystemWriterAsync
    if getattr(writer.preload_tensors, "_evomoe_cpu", False):
        return
    original = writer.preload_tensors

    def preload_tensors(write_buckets, non_blocking=True):
        return original(write_buckets, non_blocking=False)

    preload_tensors._evomoe_cpu = True
    writer.preload_tensors = staticmethod(preload_tensors)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the trainer that started it dies (Linux).

    For helper processes (checkpoint writers, DataLoader workers): a trainer killed with SIGKILL
    (OOM killer, a launcher tearing down the job) must not leave them running, holding memory and
    the job's stdout (``... | tee log`` would never return). Elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)  # the trainer died before prctl took effect


def _patch_checkpoint_writer_processes() -> None:
    """megatron's checkpoint writer starts a ``multiprocessing`` manager (a spawned server process,
    ~380 MB, plus a resource tracker) only to carry the write results of a save back to the
    trainer (filesystem_async.py:55). It outlives a SIGKILLed trainer. Our saves are synchronous,
    so those results never leave the trainer process: a plain in-process queue carries them. The
    per-save writer processes (forked) get :func:`die_with_parent`.
    """
    fsa = importlib.import_module("megatron.core.dist_checkpointing.strategies.filesystem_async")
    writer = fsa.FileSystemWriterAsync
    if getattr(writer.write_preloaded_data, "_evomoe_fixed", False):
        return
    fsa._get_write_results_queue = queue.Queue
    original = writer.write_preloaded_data

    def write_preloaded_data(*args, **kwargs):
        die_with_parent()
        return original(*args, **kwargs)

    write_preloaded_data._evomoe_fixed = True
    writer.write_preloaded_data = staticmethod(write_preloaded_data)


def _patch_aux_loss_scale(scaler) -> None:
    """A backward before any schedule ran leaves a 0-d scale; the schedule's later ``copy_`` of a
    ``[1]`` scale into it then fails. Replace the tensor when shape or device differ."""
    if getattr(scaler.set_loss_scale, "_evomoe_fixed", False):
        return

    def set_loss_scale(scale: torch.Tensor) -> None:
        current = scaler.main_loss_backward_scale
        if current is None or current.shape != scale.shape or current.device != scale.device:
            scaler.main_loss_backward_scale = scale.detach().clone()
        else:
            current.copy_(scale)

    set_loss_scale._evomoe_fixed = True
    scaler.set_loss_scale = staticmethod(set_loss_scale)


def _patch_distributed_optimizer_step() -> None:
    """Without TE/apex, torch's Adam keeps ``step`` in each parameter's state, and the distributed
    optimizer's checkpoint loaders copy every key of that state from the checkpoint's tensors, which
    never hold ``step`` (KeyError). The step is restored separately; leave it in place."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states
    if getattr(original, "_evomoe_fixed", False):
        return

    def set_states(self, model_param, tensors):
        if "step" not in tensors and not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            step = self.optimizer.state[main_param].get("step")
            if step is not None:
                tensors = {**tensors, "step": step}
        return original(self, model_param, tensors)

    set_states._evomoe_fixed = True
    DistributedOptimizer._set_main_param_and_optimizer_states = set_states


def apply_megatron_fixes() -> None:
    """Fix megatron-core 0.16.1 bugs that hit any machine without Transformer Engine, and keep its
    checkpoint writer from leaving processes behind (any machine)."""
    if _STATE["fixes_applied"]:
        return
    moe_utils = importlib.import_module("megatron.core.transformer.moe.moe_utils")
    if not hasattr(moe_utils, "te_general_gemm"):
        # Imported inside a try block, so without TE the name is undefined (NameError later).
        moe_utils.te_general_gemm = None

    if importlib.import_module("megatron.core.utils").get_te_version() is None:
        bert_model = importlib.import_module("megatron.core.models.bert.bert_model")
        # is_te_min_version compares None with a Version when TE is absent.
        bert_model.is_te_min_version = lambda *args, **kwargs: False
    _patch_aux_loss_scale(moe_utils.MoEAuxLossAutoScaler)
    _patch_distributed_optimizer_step()
    _patch_checkpoint_writer_processes()
    _STATE["fixes_applied"] = True


def bert_lm_head_norm(norm_class: type) -> None:
    """Without apex the BERT LM head's norm is torch's ``WrappedTorchNorm``, which refuses sequence
    parallelism (needed for MoE with TP > 1): build it from ``norm_class`` (megatron's norm
    constructor signature and state-dict keys) instead. With apex's fused norm, nothing changes."""
    bert_lm_head = importlib.import_module("megatron.core.models.bert.bert_lm_head")
    if not bert_lm_head.HAVE_FUSED_LAYER_NORM:
        bert_lm_head.LNImpl = norm_class


def apply_cpu_adaptations() -> None:
    """Redirect megatron-core's CUDA-only sites to the CPU (call it on a CPU run only: the caller
    knows the device, ``device.device_is_cuda``)."""
    apply_megatron_fixes()
    if _STATE["cpu_applied"]:
        return
    proxy = _CpuTorch()
    for name in _PROXIED_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "torch", None) is torch:
            module.torch = proxy
    _patch_cpu_rng()
    for name in ("megatron.core.optimizer.optimizer", "megatron.core.optimizer.clip_grads"):
        importlib.import_module(name).clip_grad_by_total_norm_fp32 = _cpu_clip_grad_by_total_norm_fp32
    _patch_checkpoint_writer()
    _patch_cuda_moves()
    _keep_freed_cpu_memory()
    _STATE["cpu_applied"] = True


def _keep_freed_cpu_memory() -> None:
    """Let glibc malloc reuse freed tensor memory instead of unmapping it and faulting it back in.

    CPU tensors come from glibc malloc, which serves large blocks (from 128 KiB, adaptively up to
    32 MiB) with ``mmap`` and trims the heap when its free top exceeds twice that: a training step
    frees its activations and the next step faults the same pages in again, zero-filled by the
    kernel. Measured on one MoE layer (docs/measurement.md): 5,700 page faults and 8 ms of system
    time per forward+backward at 2048 tokens, and the dense FFN at 8192 tokens 15% slower than with
    the memory kept. GPUs do not have this cost (PyTorch's caching allocator keeps memory); here
    the process keeps it too: no ``mmap`` for heap-sized blocks, no trimming. Other C libraries:
    nothing is changed.
    """
    if _STATE["malloc_tuned"]:
        return
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h> parameter numbers
    mallopt(m_trim_threshold, 2**31 - 1)
    mallopt(m_mmap_max, 0)
    _STATE["malloc_tuned"] = True


def megatron_topk_router(on_cuda: bool) -> type:
    """megatron-core's ``TopKRouter``, usable on this device (``on_cuda``: ``device.device_is_cuda()``).

    Its ``gating`` moves the router weight to ``torch.cuda.current_device()`` on every call
    (``transformer/moe/router.py:88``); on the CPU a subclass computes the same logits in place.
    Used to run megatron-core's own ``MoELayer`` beside ours (``analysis/megatron_moe.py``).
    """
    from megatron.core.transformer.moe.moe_utils import router_gating_linear
    from megatron.core.transformer.moe.router import TopKRouter

    if on_cuda:
        return TopKRouter
    return _cpu_topk_router(TopKRouter, router_gating_linear)


@functools.lru_cache(maxsize=None)
def _cpu_topk_router(topk_router: type, router_gating_linear) -> type:
    class CPUTopKRouter(topk_router):
        """TopKRouter whose gating leaves the weight where it is (the CPU)."""

        def gating(self, input: torch.Tensor) -> torch.Tensor:
            router_dtype = {"fp32": torch.float32, "fp64": torch.float64}.get(self.config.moe_router_dtype, input.dtype)
            return router_gating_linear(input, self.weight, self.bias, router_dtype)

    return CPUTopKRouter
