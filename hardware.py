"""
The hardware decisions the scripts ask about, answered: which device, which autocast dtype and why, the micro-batch
that fits a GPU, whether torch.compile works on this machine, the peak FLOP/s that MFU divides by, Muon in a
precision the device computes fast; and FSDP's sharding and whole copy of the weights. The scripts then call torch
themselves (torch.autocast, torch.compile, the process group). Every script's --device and --dtype end here; nothing
here imports a script.
"""

import contextlib
import functools
import math
import re

import torch

from cli import InputError, first_line


def pick_device(name, local_rank=0):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        index = device.index if device.index is not None else local_rank
        if index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise InputError(f"--device {name}: this machine has {n} CUDA devices; use --device auto or cpu")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps: MPS is not available here; use --device auto or cpu")
    return device


def native_bf16(device):
    # torch.cuda.is_bf16_supported() says True on pre-Ampere GPUs too, through emulation slower than their fp16
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    mkldnn = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return device.type == "cpu" and mkldnn


class Muon(torch.optim.Muon):
    """torch.optim.Muon, its Newton-Schulz iterations in float32 where the device has no native bf16: torch's run in
    bf16, which such a CPU emulates (a `mini` step of 1,024 tokens on 2 AMD EPYC cores without AVX-512: Muon 9.8 s
    of 11.6 s; in float32 0.2 s). Elsewhere torch's own step. The state is the same (a momentum_buffer per matrix):
    checkpoints move between them."""

    @torch.no_grad()
    def step(self):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params or native_bf16(params[0].device):
            return super().step()
        for group in self.param_groups:
            a, b, c = group["ns_coefficients"]
            for p in (p for p in group["params"] if p.grad is not None):
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.lerp_(p.grad, 1 - group["momentum"])
                x = p.grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer
                x = x.to(torch.promote_types(x.dtype, torch.float32))
                x = x.T if p.size(0) > p.size(1) else x  # wide: the Gram matrix is the small one
                x = x / x.norm().clamp(min=group["eps"])  # spectral norm at most 1
                for _ in range(group["ns_steps"]):  # x <- a x + (b G + c G²) x, G = x xᵀ (Jordan et al. 2024)
                    gram = x @ x.T
                    x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
                x = x.T if p.size(0) > p.size(1) else x
                p.mul_(1 - group["lr"] * group["weight_decay"])
                scale = math.sqrt(max(1, p.size(0) / p.size(1)))  # torch's default, adjust_lr_fn "original"
                p.add_(x.to(p.dtype), alpha=-group["lr"] * scale)


def auto_dtype(device):
    """(dtype name, why) for --dtype auto: bf16 where native, fp16 on CUDA 7.x's tensor cores, else float32."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        hardware = f"CUDA compute capability {major}.{minor}"
    else:
        major, hardware = None, "MPS" if device.type == "mps" else "this CPU"
    if native_bf16(device):
        return "bfloat16", f"auto: {hardware} has native bf16"
    if major == 7:
        return "float16", f"auto: {hardware} has fp16 tensor cores, no native bf16"
    return "float32", f"auto: float32 on {hardware}"


def autocast_dtype(dtype, device):
    """(torch dtype, why) for --dtype on device, autocast's (float32: autocast off); a dtype the GPU has no tensor
    cores for is refused. On CUDA, float32 matmuls may use TF32 from here on, as the published GPT-2 numbers were
    made."""
    if dtype == "bfloat16" and device.type == "cuda" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise InputError(
            f"--dtype bfloat16: this GPU (CUDA compute capability {major}.{minor}) has no bfloat16 tensor cores;"
            " use --dtype float16 (or auto)"
        )
    dtype, why = auto_dtype(device) if dtype == "auto" else (dtype, f"--dtype {dtype}")
    if device.type == "cuda":  # the new switch where there is one: set_float32_matmul_precision warns from torch 2.9
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
            torch.backends.cuda.matmul.fp32_precision = "tf32"
        else:
            torch.set_float32_matmul_precision("high")
    return getattr(torch, dtype), why


# dense tensor-core peaks, (bf16, fp16) FLOP/s, from NVIDIA's datasheets and architecture whitepapers (GeForce cards:
# with FP32 accumulate, as autocast's matmuls run; the RTX 5090's fp16 row taken equal to its bf16 one). A key matches a
# whole word of the device's name, case aside; the first that matches wins. T4 and V100 have no bf16 (None)
GPU_PEAK_FLOPS = {
    "H100 PCIe": (756e12, 756e12),
    "H100 NVL": (835e12, 835e12),
    "H200 NVL": (835e12, 835e12),
    "H100": (989e12, 989e12),
    "H200": (989e12, 989e12),
    "A100": (312e12, 312e12),
    "L40S": (362e12, 362e12),
    "A10": (125e12, 125e12),
    "L4": (121e12, 121e12),
    "RTX A6000": (154.8e12, 154.8e12),
    "RTX 5090": (209.5e12, 209.5e12),
    "RTX 4090": (165.2e12, 165.2e12),
    "RTX 3090": (71.2e12, 71e12),
    "V100S": (None, 130e12),
    "V100-PCIE": (None, 112e12),
    "V100": (None, 125e12),
    "T4": (None, 65e12),
}


@functools.cache  # asked at every step, for MFU: the device's name is looked up once
def peak_flops(device, dtype):
    """The device's dense tensor-core peak for dtype (bfloat16 or float16), None where unknown: a CPU, MPS, a GPU not
    in GPU_PEAK_FLOPS, or float32."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    known = (peaks for key, peaks in GPU_PEAK_FLOPS.items() if re.search(rf"\b{key}\b", name, re.IGNORECASE))
    peaks = next(known, None)
    return peaks and peaks[dtype == torch.float16]


def mfu(flops_per_second, device, dtype):
    """Model FLOPs utilization: the share of the device's peak that training's FLOPs use (None: peak unknown)."""
    peak = peak_flops(device, dtype)
    return flops_per_second / peak if peak else None


def fit_batch_size(rows, fits):
    """The micro-batch for `rows` sequences per optimizer step and process: the largest of 64 (build-nanogpt's), 32,
    16 ... 1 that divides rows, so accumulation makes up the exact batch, and for which fits(B) is true; 0 if none
    does. fits is an argument so that a CPU test can drive it."""
    B = math.gcd(64, rows)
    while B >= 1 and not fits(B):
        B //= 2
    return B


def micro_batch_size(cfg, saved_batch_size, world_size):
    """B, before the model is built: as given; on a resume, the run's own; else the largest of 64, 32 ... that
    divides the step's sequences (on a GPU then halved until a step fits: fit_to_memory)."""
    T = cfg.seq_len
    rows = cfg.total_batch_size // (T * world_size)
    B = cfg.batch_size or saved_batch_size or fit_batch_size(rows, lambda b: True)
    if cfg.total_batch_size % (B * T * world_size):
        raise InputError(
            f"--total_batch_size {cfg.total_batch_size} is not a multiple of batch_size x seq_len x processes ="
            f" {B} x {T} x {world_size} = {B * T * world_size}; change one of them"
        )
    return B


def step_runs(model, B, T, device, autocast, errors, reserve=0):
    """(True, None) if one forward and backward of B sequences raises none of `errors` on any rank, with `reserve`
    bytes of memory held aside meanwhile, else (False, why): the same answer on every rank. Leaves no gradients."""
    model.zero_grad(set_to_none=True)
    why = None
    try:
        held = torch.empty(reserve, dtype=torch.uint8, device=device)  # noqa: F841  taken while the step runs
        x = torch.zeros(B, T, dtype=torch.long, device=device)
        with autocast:
            model(x, x)[1].backward()
    except errors as e:  # kept as a line of text: the exception's frames would hold on to the activations
        why = first_line(getattr(e, "inner_exception", None) or e)
    model.zero_grad(set_to_none=True)
    ok = torch.tensor(float(why is None), device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(ok, torch.distributed.ReduceOp.MIN)
    return bool(ok), why or "on another process"


def fit_to_memory(model, B, T, device, autocast, fsdp):
    """The largest of B, B/2 ... 1 whose forward and backward fit in this GPU's memory beside what training adds
    later: AdamW's two moments and DDP's buckets, three more copies of the weights (under FSDP of this rank's shards,
    plus the whole gradients that accumulation keeps between micro-steps)."""
    reserve = 3 * torch.cuda.memory_allocated(device) + (4 * model.num_params() if fsdp else 0)
    fits = lambda b: step_runs(model, b, T, device, autocast, torch.OutOfMemoryError, reserve)[0]
    return max(1, fit_batch_size(B, fits))


def compiles(compiled, B, T, device, autocast, log):
    """Whether a torch.compile'd model compiles here, tried on one step (every rank alike): without Triton or a
    working C++ compiler it cannot, and the run goes on eagerly, saying so."""
    works, failure = step_runs(compiled, B, T, device, autocast, torch._dynamo.exc.BackendCompilerFailed)
    if not works:
        log(
            f"torch.compile cannot compile here ({failure}): training without it, slower, with the same losses;"
            " --no-compile skips the attempt"
        )
    return works


def shard(model):
    """FSDP2, in place: each Block, then the root (embeddings, ln_f, the tied lm_head), all-gathered in turn. bf16
    stays autocast's, not FSDP's MixedPrecisionPolicy: DDP's numerics, so a run moves between the two through a
    checkpoint."""
    from torch.distributed.fsdp import fully_shard

    for module in (*model.transformer.h, model):
        fully_shard(module)


@contextlib.contextmanager
def whole_weights(model, fsdp, model_class):
    """The model to evaluate, score and sample with: itself; under FSDP a plain model_class with the whole weights,
    all-gathered (every rank joins), whose memory goes back when the context ends."""
    if not fsdp:
        yield model
        return
    with torch.device("meta"):  # no memory, no random init: the weights come next
        copy = model_class(model.config)
    tied = model.config.tied_head
    weights = {k: v.full_tensor() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    copy.load_state_dict(weights, strict=not tied, assign=True)
    if tied:  # as in the model: gathered once
        copy.lm_head.weight = copy.transformer.wte.weight
    try:
        yield copy
    finally:
        copy.to("meta")  # the caller's name for it outlives the context, its weights do not
