"""
GPT-2 (124M and up) in one file: the model, the token-shard loader and the training loop.

    python fineweb.py                                         # token shards into edu_fineweb10B/
    python train_gpt2.py                                      # one GPU (or CPU / MPS)
    torchrun --standalone --nproc_per_node=8 train_gpt2.py    # eight GPUs, DistributedDataParallel
    python train_gpt2.py --resume                             # continue from the newest checkpoint in log/

Importing this file defines things and nothing else (the other scripts import the model, the device and the precision
from here; cli.py holds what every script's command line shares); training runs only under __main__.
The defaults reproduce build-nanogpt's GPT-2 124M recipe on FineWeb-Edu 10B.
"""

import argparse
import contextlib
import dataclasses
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from cli import ArgumentParser, InputError, add_flags, check_at_least, first_line, flag  # the command line all scripts share

EOT_TOKEN = 50256           # <|endoftext|> of the GPT-2 BPE: starts every document
GPT2_VOCAB_SIZE = 50257     # real tokens; ids at or above this are embedding padding, never data
PADDED_VOCAB_SIZE = 50304   # 50257 rounded up to a multiple of 128 so the lm_head matmul tiles evenly on GPUs
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # OpenAI's checkpoints on the Hugging Face hub
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # Conv1D in HF: (in, out)

# -----------------------------------------------------------------------------
# the model
@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context, in tokens (learned position embeddings)
    vocab_size: int = GPT2_VOCAB_SIZE  # rows of wte / lm_head; training pads it to PADDED_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768

# architecture presets: OpenAI's four GPT-2 sizes, plus small ones that train in minutes on a laptop CPU
MODEL_PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),  # 16M, 13M of it the token embedding
    "micro": dict(n_layer=2, n_head=2, n_embd=64, block_size=128),  # 3.3M: smoke tests
}

class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # query, key and value projections in one matmul, as in the GPT-2 checkpoint (c_attn)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        mask = None
        if kv_cache is not None:  # generation (sample.py): every cached key and value, and which of them each query sees
            k, v, mask = kv_cache.update(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)

class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 was trained with the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))

class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None):
        # pre-LayerNorm (GPT-2 moved the norms in front of each sublayer) keeps a clean residual stream
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2 (Press & Wolf 2017)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_SCALE_INIT", False):
                # GPT-2 paper: scale the residual projections by 1/sqrt(N), N = 2 additions per layer
                std *= (2 * self.config.n_layer) ** -0.5
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(self, idx, kv_cache=None):
        """The final LayerNorm's output (B, T, n_embd), which lm_head turns into logits: scorers (hellaswag.py) and
        generation (sample.py) apply lm_head only where they need logits, its 50304 columns being most of the cost."""
        B, T = idx.size()
        assert T <= self.config.block_size, f"sequence of {T} exceeds block_size {self.config.block_size}"
        # generation's cache holds where its tokens go in a tensor: a compiled decode step then reads no changing int
        pos = kv_cache[0].positions(T) if kv_cache else torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_cache[i] if kv_cache else None)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, kv_cache=None):
        logits = self.lm_head(self.hidden_states(idx, kv_cache))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
            # training backpropagates the loss alone; logits that required grad would make a compiled
            # backward fill and add a zero gradient of their full (B, T, 50304) size: a tenth of a CPU step
            logits = logits.detach()
        return logits, loss

    def num_params(self, non_embedding=False):
        """Parameters, the tied wte/lm_head counted once; non_embedding also leaves out wpe."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, T):
        """Training FLOPs per token (PaLM paper, appendix B): 6 per weight plus attention's 12·L·H·Q·T."""
        return 6 * self.num_params(non_embedding=True) + 12 * self.config.n_layer * self.config.n_embd * T

    @classmethod
    def from_pretrained(cls, name_or_path, check=lambda config: None):
        """GPT-2 weights from Hugging Face: a hub name (gpt2 ... gpt2-xl, downloads) or a save_pretrained folder.
        check(config) may refuse the architecture before the weights load."""
        if not Path(name_or_path).is_dir() and name_or_path not in GPT2_NAMES:
            raise InputError(f"from_pretrained: {name_or_path!r} is neither a local folder nor one of gpt2, gpt2-medium, gpt2-large, gpt2-xl")
        from transformers import AutoConfig, GPT2LMHeadModel  # slow to import: only once the name is known to be good
        try:  # the config first, one small file: another architecture is refused before its weights load
            hc = AutoConfig.from_pretrained(name_or_path)
            if hc.model_type != "gpt2" or hc.activation_function != "gelu_new" or hc.scale_attn_by_inverse_layer_idx or hc.reorder_and_upcast_attn:
                raise InputError(f"from_pretrained: {name_or_path!r} is not a plain GPT-2 ({hc.model_type}, activation {getattr(hc, 'activation_function', None)})")
            config = GPTConfig(block_size=hc.n_positions, vocab_size=hc.vocab_size, n_layer=hc.n_layer, n_head=hc.n_head, n_embd=hc.n_embd)
            check(config)
            hf = GPT2LMHeadModel.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            fix = "it is not a save_pretrained folder of a GPT-2" if Path(name_or_path).is_dir() else "check the network, or pass a local folder"
            raise InputError(f"from_pretrained: cannot load {name_or_path!r} ({first_line(e)}); {fix}")
        model = cls(config)
        sd = model.state_dict()
        sd_hf = {k: v for k, v in hf.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        assert set(sd_hf) == set(sd), f"unexpected keys: {set(sd_hf) ^ set(sd)}"
        with torch.no_grad():
            for k, v in sd_hf.items():
                sd[k].copy_(v.t() if k.endswith(HF_TRANSPOSED) else v)
        return model

    @classmethod
    def from_checkpoint(cls, path, device="cpu"):
        """Our GPT from a training checkpoint: a model_*.pt file, or a log dir (its newest checkpoint)."""
        path = Path(path)
        if path.is_dir():
            found = checkpoint_paths(path)
            if not found:
                raise InputError(f"no checkpoint (model_*.pt) in {path}: train one first, or name a checkpoint file")
            path = found[-1]
        elif not path.is_file():
            raise InputError(f"checkpoint {path} does not exist")
        checkpoint = load_checkpoint(path, device)
        if not isinstance(checkpoint, dict) or not {"model", "config"} <= checkpoint.keys():
            raise InputError(f"{path} is not a train_gpt2.py checkpoint (it has no model and config)")
        try:  # a config GPTConfig does not know, or weights of other names or shapes: written by something else
            model = cls(GPTConfig(**checkpoint["config"])).to(device)
            model.load_state_dict(checkpoint["model"])
        except (TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"{path} is not a train_gpt2.py checkpoint: its weights do not fit its config ({first_line(e)})")
        return model

    def configure_optimizers(self, weight_decay, learning_rate, device_type):
        # decay the matmul weights and embeddings only: biases and LayerNorm gains stay free (GPT-3 paper)
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = device_type in ("cuda", "cpu")  # one kernel for all parameters instead of one per tensor
        return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95), eps=1e-8, fused=fused)

def gpt2_tokenizer():
    """tiktoken's GPT-2 BPE: its files download once into tiktoken's cache (offline: TIKTOKEN_CACHE_DIR)."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' connection errors and friends: no network and no cached files
        raise InputError(f"cannot load tiktoken's gpt2 encoding ({type(e).__name__}): connect to the internet once, or set TIKTOKEN_CACHE_DIR to a folder holding its files")

# -----------------------------------------------------------------------------
# data: uint16 token shards written by fineweb.py
def load_shard(path):
    """Memory-map one shard, refusing anything but a 1-D uint16 array of GPT-2 token ids."""
    try:
        tokens = np.load(path, mmap_mode="r")
    except OSError as e:
        raise InputError(f"shard {path} cannot be read ({e})")
    except (ValueError, EOFError):
        raise InputError(f"shard {path} is not a .npy array (truncated, or another format); rewrite it with fineweb.py")
    if tokens.ndim != 1 or tokens.dtype != np.uint16:
        raise InputError(f"shard {path} holds a {tokens.dtype} array of shape {tokens.shape}, expected 1-D uint16 tokens; rewrite it with fineweb.py")
    # checked up front (a second or so per GB) so a bad shard stops the run before it writes anything
    if len(tokens) and int(tokens.max()) >= GPT2_VOCAB_SIZE:
        raise InputError(f"shard {path} holds token id {int(tokens.max())}, but GPT-2 has {GPT2_VOCAB_SIZE} tokens: it was not written by fineweb.py")
    return tokens

class DataLoaderLite:
    """Batches of (B, T) tokens from the shards of one split, read as one endless stream: the split's shards end
    to end, epoch after epoch (train shards in a new seeded order each epoch). Every micro-step consumes B·T·world_size
    tokens and rank r reads the r-th B·T slice of them (+1 token for the last target), so one rank accumulating
    k micro-steps sees exactly the tokens of k ranks."""
    def __init__(self, data_dir, split, B, T, rank=0, world_size=1, shuffle=False, seed=0):
        self.B, self.T, self.rank, self.world_size, self.shuffle, self.seed = B, T, rank, world_size, shuffle, seed
        paths = sorted(Path(data_dir).glob(f"*_{split}_*.npy"))
        if not paths:
            raise InputError(f"no {split} shards (*_{split}_*.npy) in {data_dir}: run fineweb.py first, or point --data_dir at its output")
        self.shards = [load_shard(p) for p in paths]
        self.total_tokens = sum(len(s) for s in self.shards)
        if self.total_tokens < 2:
            raise InputError(f"the {split} shards in {data_dir} hold {self.total_tokens} tokens: too few to train on")
        self.position = 0  # tokens of the stream consumed by all ranks together

    def _order(self, epoch):
        if not self.shuffle:
            return np.arange(len(self.shards))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))

    def read(self, position, n):
        """n tokens of the stream starting at position, crossing shard and epoch boundaries."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            epoch, offset = divmod(position + filled, self.total_tokens)
            order = self._order(epoch)
            ends = np.cumsum([len(self.shards[i]) for i in order])
            k = int(np.searchsorted(ends, offset, side="right"))  # the shard holding `offset`
            start = offset - (ends[k] - len(self.shards[order[k]]))
            take = min(n - filled, int(ends[k] - offset))
            out[filled : filled + take] = self.shards[order[k]][start : start + take]
            filled += take
        return out

    def batch_at(self, position, B):
        """B rows of T inputs starting at a stream position, with their next-token targets."""
        buf = torch.from_numpy(self.read(position, B * self.T + 1))
        return buf[:-1].view(B, self.T), buf[1:].view(B, self.T)

    def next_batch(self):
        x, y = self.batch_at(self.position + self.rank * self.B * self.T, self.B)
        self.position += self.B * self.T * self.world_size
        return x, y

    def state_dict(self):
        return {"position": self.position, "total_tokens": self.total_tokens}

    def load_state_dict(self, state):
        if state["total_tokens"] != self.total_tokens:
            raise InputError(f"the checkpoint read a split of {state['total_tokens']} tokens, --data_dir now holds {self.total_tokens}: resume with the data it was trained on")
        self.position = state["position"]

# -----------------------------------------------------------------------------
# the command line, and the device and precision it asks for (every script's --device and --dtype)
def device_name(value):
    """argparse type of every script's --device flag."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return value

DEVICE_FLAG = dict(default="auto", type=device_name, help="auto picks cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps")
DTYPE_FLAG = dict(default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                  help="autocast precision. auto = bfloat16 where the hardware has it natively (CUDA compute capability 8.0+, "
                       "CPUs with AVX-512 bf16 or AMX), float16 with a gradient scaler on CUDA 7.x (V100, T4, RTX 20xx), "
                       "else float32 (older GPUs, Apple MPS, other CPUs)")

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
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices; use --device auto or cpu")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps: MPS is not available here; use --device auto or cpu")
    return device

def make_autocast(dtype, device):
    """(autocast context, torch dtype, why) for --dtype on device; a dtype the GPU has no tensor cores for is refused.
    On CUDA, float32 matmuls may use TF32, as the published GPT-2 numbers were made."""
    cc = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    # torch.cuda.is_bf16_supported() says True on pre-Ampere GPUs too, through emulation slower than their fp16
    native_bf16 = cc >= (8, 0) if cc else device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    hardware = f"CUDA compute capability {cc[0]}.{cc[1]}" if cc else device.type.upper() if device.type == "mps" else "this CPU"
    if dtype == "bfloat16" and cc and not native_bf16:
        raise InputError(f"--dtype bfloat16: this GPU ({hardware}) has no bfloat16 tensor cores; use --dtype float16 (or auto)")
    why = f"--dtype {dtype}"
    if dtype == "auto":
        dtype = "bfloat16" if native_bf16 else "float16" if cc and cc[0] == 7 else "float32"
        why = f"auto: {hardware} has native bf16" if native_bf16 else f"auto: {hardware} has fp16 tensor cores, no native bf16" if dtype == "float16" else f"auto: float32 on {hardware}"
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    dtype = getattr(torch, dtype)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32), dtype, why

# dense bf16 tensor-core peaks from NVIDIA's datasheets, FLOP/s; the first name found in the device name wins
GPU_BF16_PEAK_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12}

def peak_flops(device):
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((flops for key, flops in GPU_BF16_PEAK_FLOPS.items() if key in name), None)

# -----------------------------------------------------------------------------
# training configuration: its fields are the command-line flags
@dataclass
class TrainConfig:
    data_dir: str = flag("edu_fineweb10B", "folder of uint16 token shards written by fineweb.py")
    log_dir: str | None = flag(None, "where log.txt and the checkpoints go (default: log/<run_name> with --run_name, else log)")
    run_name: str | None = flag(None, "a name for this run: its log dir (unless --log_dir is given) and its wandb name")
    model: str | None = flag(None, "architecture preset (default: gpt2, or with --init_from or --resume the weights')", choices=list(MODEL_PRESETS))
    n_layer: int | None = flag(None, "number of layers (default: the preset's)")
    n_head: int | None = flag(None, "number of attention heads (default: the preset's)")
    n_embd: int | None = flag(None, "embedding width (default: the preset's)")
    init_from: str | None = flag(None, "start from these weights, with a fresh optimizer: gpt2 ... gpt2-xl (downloaded), a save_pretrained folder, or one of our checkpoints (model_*.pt, or a log dir: its newest)")
    batch_size: int | None = flag(None, "B: sequences per micro-step per process (default: 64, or the largest power of two dividing the step's sequences; on a GPU then halved until a step fits; on a resume the run's)")
    seq_len: int = flag(1024, "T: tokens per sequence (at most the preset's block_size)")
    total_batch_size: int = flag(524288, "tokens per optimizer step (2**19, ~0.5M as in GPT-3 small); gradient accumulation makes up the rest")
    max_lr: float = flag(6e-4, "peak learning rate (GPT-3 small); cosine-decays to 10%% of it")
    warmup_steps: int = flag(715, "steps of linear warmup (375M tokens, as in GPT-3)")
    max_steps: int = flag(19073, "optimizer steps (19073 x 524288 tokens = 10B tokens, one epoch of FineWeb-Edu 10B)")
    weight_decay: float = flag(0.1, "AdamW weight decay on matmul weights and embeddings")
    grad_clip: float = flag(1.0, "clip the global gradient norm to this")
    eval_interval: int = flag(250, "steps between validation runs (0: only at the end)")
    val_tokens: int = flag(10485760, "tokens of the val split to evaluate, all processes together")
    hellaswag_interval: int = flag(250, "steps between HellaSwag scorings (0: never)")
    hellaswag_limit: int | None = flag(None, "score only the first N HellaSwag val examples (default: all 10,042)")
    hellaswag_dir: str | None = flag(None, "folder holding hellaswag_val.jsonl, downloaded there if missing (default: hellaswag/ beside hellaswag.py)")
    sample_interval: int = flag(250, "steps between printed samples (0: never)")
    checkpoint_interval: int = flag(5000, "steps between checkpoints (one is always written at the end)")
    resume: bool = flag(False, "continue from the newest checkpoint in --log_dir")
    compile: bool | None = flag(None, "torch.compile the model (default: on for CUDA, off elsewhere)")
    fsdp: bool = flag(False, "under torchrun: shard the weights, gradients and AdamW state across the processes (FSDP2) instead of copying them (DDP)")
    dtype: str = flag(**DTYPE_FLAG)
    device: str = flag(**DEVICE_FLAG)
    shuffle: bool = flag(True, "visit the train shards in a new seeded order every epoch")
    seed: int = flag(1337, "seed for initialization, shard order and samples")
    wandb: bool = flag(False, "also log to Weights & Biases (pip install wandb; WANDB_MODE=offline works without a network)")
    wandb_project: str = flag("gpt2-kit", "the wandb project to log to")

def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_flags(parser, TrainConfig)
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    check_at_least(parser, cfg, 1, ["batch_size", "seq_len", "total_batch_size", "max_steps", "val_tokens", "n_layer", "n_head", "n_embd", "hellaswag_limit"])
    check_at_least(parser, cfg, 0, ["warmup_steps", "eval_interval", "hellaswag_interval", "sample_interval", "checkpoint_interval"])
    if cfg.val_tokens < cfg.seq_len:
        parser.error(f"--val_tokens {cfg.val_tokens} is less than one sequence of --seq_len {cfg.seq_len}")
    if cfg.max_lr <= 0 or cfg.grad_clip <= 0 or cfg.weight_decay < 0:
        parser.error("--max_lr and --grad_clip must be positive and --weight_decay not negative")
    if cfg.run_name is not None and (not cfg.run_name.strip() or Path(cfg.run_name).name != cfg.run_name or cfg.run_name in (".", "..")):
        parser.error(f"--run_name {cfg.run_name!r} must be a plain folder name such as gpt2-run1")
    if cfg.fsdp and int(os.environ.get("WORLD_SIZE", 1)) < 2:
        parser.error("--fsdp shards the model across processes: launch with torchrun --nproc_per_node=N (a single process gains nothing)")
    if cfg.log_dir is None:
        cfg.log_dir = str(Path("log", cfg.run_name or ""))
    if cfg.init_from is None:  # else the weights' architecture, checked once they are loaded
        check_model_config(parser, make_model_config(cfg), cfg)
    return cfg

def check_model_config(parser, model_config, args):
    if model_config.n_embd % model_config.n_head:
        parser.error(f"--n_embd {model_config.n_embd} is not divisible by --n_head {model_config.n_head}")
    if args.seq_len > model_config.block_size:
        parser.error(f"--seq_len {args.seq_len} exceeds the {args.model or 'gpt2'} block_size of {model_config.block_size}")

def make_model_config(cfg):
    overrides = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd") if getattr(cfg, k) is not None}
    return GPTConfig(**{**MODEL_PRESETS[cfg.model or "gpt2"], **overrides, "vocab_size": PADDED_VOCAB_SIZE})

def check_architecture(config, cfg, source):
    """The architecture flags given (--model, --n_layer, ...) must be those of the weights a run starts from."""
    if not isinstance(config, dict) or set(config) - {f.name for f in dataclasses.fields(GPTConfig)}:
        raise InputError(f"{source} holds no GPTConfig ({config!r}): it was not written by train_gpt2.py")
    if config.get("vocab_size", GPT2_VOCAB_SIZE) < GPT2_VOCAB_SIZE:  # the data's token ids would index past its embedding
        raise InputError(f"{source} has a vocabulary of {config['vocab_size']}, fewer than GPT-2's {GPT2_VOCAB_SIZE} tokens in the shards")
    asked = {**MODEL_PRESETS.get(cfg.model, {}), **{k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd") if getattr(cfg, k) is not None}}
    if differ := {k: v for k, v in asked.items() if config.get(k) != v}:
        raise InputError(f"{source} was trained with {config}, but the flags ask for {differ}: leave out the architecture flags, or match them")
    if cfg.seq_len > config.get("block_size", cfg.seq_len):
        raise InputError(f"--seq_len {cfg.seq_len} exceeds the block_size {config['block_size']} of {source}: pass --seq_len {config['block_size']} or less")

def get_lr(step, cfg):
    """Linear warmup, then cosine decay to 10% of max_lr at max_steps (GPT-3 paper, appendix B)."""
    min_lr = 0.1 * cfg.max_lr
    if step < cfg.warmup_steps:
        return cfg.max_lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.max_lr - min_lr)

# -----------------------------------------------------------------------------
# checkpoints: <log_dir>/model_<step:05d>.pt holds the state after `step` optimizer steps
def checkpoint_paths(log_dir):
    """Complete checkpoints in log_dir, oldest first (temporary files never match)."""
    found = [(int(m.group(1)), p) for p in Path(log_dir).glob("model_*.pt") if (m := re.fullmatch(r"model_(\d+)\.pt", p.name))]
    return [p for _, p in sorted(found)]

def save_checkpoint(path, state):
    # write beside the final name, then rename: a crash mid-write never leaves a half file under it
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

def load_checkpoint(path, device="cpu"):
    """A checkpoint dict (plain containers and tensors only, so weights_only loading is safe)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file; any of them means unreadable
        raise InputError(f"checkpoint {path} cannot be loaded ({type(e).__name__}): it is damaged or not a checkpoint")

def training_state(step, val_loss, model, optimizer, scaler, train_loader, device, cfg, wandb_run, keep=True):
    """What a checkpoint holds: what continues the run exactly (restore_training_state's inverse), and notes. The state
    dicts are a single process's, whether or not FSDP sharded the model: every rank calls this, only rank 0 keeps them."""
    def full(t):  # an FSDP shard (a DTensor) gathered tensor by tensor: an all-gather, which every rank joins
        return t.full_tensor().to("cpu" if keep else "meta") if hasattr(t, "full_tensor") else t  # meta: dropped at once
    model_state, opt = {k: full(v) for k, v in model.state_dict().items() if k != "lm_head.weight"}, optimizer.state_dict()
    model_state["lm_head.weight"] = model_state["transformer.wte.weight"]  # tied to wte: one tensor, saved once
    return {"model": model_state, "config": dataclasses.asdict(model.config), "step": step, "val_loss": val_loss,
            "optimizer": {**opt, "state": {i: {k: full(v) for k, v in s.items()} for i, s in opt["state"].items()}},
            "scaler": scaler.state_dict(), "train_loader": train_loader.state_dict(),
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
            "args": dataclasses.asdict(cfg), "wandb_run_id": wandb_run.id if wandb_run is not None else None}

RESUMABLE = {"model", "config", "step", "val_loss", "optimizer", "train_loader", "rng"}  # what a resume reads

def restore_training_state(path, checkpoint, model, optimizer, scaler, train_loader, device, local_rank, cfg, log):
    """Put a checkpoint's state back into the new model, optimizer and loader; (step, val_loss). Changed flags are named."""
    try:
        def shard(t, like):  # FSDP: this rank's shard of a whole tensor, cut as `like` is (the optimizer's step counts stay whole)
            return torch.distributed.tensor.distribute_tensor(t.to(like.device), like.device_mesh, like.placements, src_data_rank=None) if hasattr(like, "device_mesh") and t.dim() else t
        sharded, params = model.state_dict(), [p for group in optimizer.param_groups for p in group["params"]]
        model.load_state_dict({k: shard(v, sharded.get(k)) for k, v in checkpoint["model"].items()})
        state = {i: {k: shard(v, params[i]) for k, v in s.items()} for i, s in checkpoint["optimizer"]["state"].items()}
        optimizer.load_state_dict({**checkpoint["optimizer"], "state": state})
    except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as e:
        raise InputError(f"{path} cannot be resumed: its weights or optimizer state do not fit its config ({first_line(e)})")
    if scaler.is_enabled() and checkpoint.get("scaler"):  # float16's loss scale; empty from other dtypes' runs
        scaler.load_state_dict(checkpoint["scaler"])
    train_loader.load_state_dict(checkpoint["train_loader"])
    torch.set_rng_state(checkpoint["rng"]["cpu"])
    if device.type == "cuda" and checkpoint["rng"]["cuda"]:
        torch.cuda.set_rng_state(checkpoint["rng"]["cuda"][local_rank % len(checkpoint["rng"]["cuda"])], device)
    log(f"resuming from {path} at step {checkpoint['step']}")
    saved_args = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}  # another program's: none
    if changed := [f"--{k} {v} -> {getattr(cfg, k)}" for k, v in saved_args.items() if k not in ("resume", "log_dir", "init_from") and getattr(cfg, k, v) not in (v, None)]:
        log(f"flags changed since that checkpoint, the run goes on with the new values: {', '.join(changed)}")
    return checkpoint["step"], checkpoint["val_loss"]

def checkpoint_to_resume(log_dir, resume, cfg, log):
    """(path, checkpoint) that the run continues from, or (None, None) for a new run. With --resume, the newest
    checkpoint that loads (damaged ones are named and skipped); without it, a log dir with checkpoints is refused."""
    if log_dir.exists() and not log_dir.is_dir():
        raise InputError(f"--log_dir {log_dir} is a file, not a folder: choose a new --log_dir")
    found = checkpoint_paths(log_dir)
    if found and not resume:
        raise InputError(f"{log_dir} already holds checkpoints: pass --resume to continue that run, or choose a new --log_dir")
    for path in reversed(found):
        try:
            checkpoint = load_checkpoint(path)
        except InputError as e:
            log(f"{e}; trying an older one")
            continue
        if missing := RESUMABLE - (checkpoint.keys() if isinstance(checkpoint, dict) else set()):
            raise InputError(f"{path} cannot be resumed: it has no {', '.join(sorted(missing))} (saved for sampling, or by another program); move it aside, or choose a new --log_dir")
        check_architecture(checkpoint["config"], cfg, path)
        return path, checkpoint
    if found:
        raise InputError(f"none of the checkpoints in {log_dir} loads: move them aside to start over, or choose a new --log_dir")
    if resume:
        log(f"no checkpoint in {log_dir} to resume from: starting a new run")
    return None, None

# -----------------------------------------------------------------------------
# the training script: setup in named steps, then the loop
def setup_distributed(device_name):
    """(rank, local_rank, world_size, device): under torchrun (RANK, LOCAL_RANK, WORLD_SIZE set) in the process group."""
    ddp = "RANK" in os.environ
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")) if ddp else (0, 0, 1)
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if ddp:  # NCCL between GPUs, gloo between CPU processes
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return rank, local_rank, world_size, device

def evaluate(model, val_loader, n_seqs, batch_size, rank, world_size, device, autocast):
    """Mean loss over the first n_seqs sequences of the val stream; each rank scores a contiguous share."""
    T, first, last = val_loader.T, rank * n_seqs // world_size, (rank + 1) * n_seqs // world_size
    loss_sum = torch.zeros((), device=device)
    with torch.no_grad():
        for i in range(first, last, batch_size):
            x, y = val_loader.batch_at(i * T, min(batch_size, last - i))
            with autocast:
                _, loss = model(x.to(device), y.to(device))
            loss_sum += loss.float() * y.numel()  # summed, not averaged, so uneven shares weigh right
    if world_size > 1:
        torch.distributed.all_reduce(loss_sum)
    return loss_sum.item() / (n_seqs * T)

def initial_model(cfg, checkpoint, log):
    """The model a run starts from: a resumed run's architecture (restore_training_state loads its weights), else
    --init_from's weights and architecture (OpenAI's keep their 50257 rows: no padding to change their loss), else a
    fresh init of --model's."""
    if checkpoint is not None:
        if cfg.init_from:
            log(f"resuming: --init_from {cfg.init_from} is not used, the checkpoint holds the weights")
        return GPT(GPTConfig(**checkpoint["config"]))
    if cfg.init_from is None:
        return GPT(make_model_config(cfg))
    source = Path(cfg.init_from)
    ours = source.is_file() or (source.is_dir() and checkpoint_paths(source))  # else a hub name or save_pretrained folder
    check = lambda config: check_architecture(dataclasses.asdict(config), cfg, f"--init_from {cfg.init_from}")
    model = GPT.from_checkpoint(source) if ours else GPT.from_pretrained(cfg.init_from, check)
    check(model.config)
    return model

def fit_batch_size(rows, fits):
    """The micro-batch for `rows` sequences per optimizer step and process: the largest of 64 (build-nanogpt's), 32, 16 ...
    1 that divides rows, so accumulation makes up the exact batch, and for which fits(B) is true; 0 if none does.
    fits is an argument so that a CPU test can drive it."""
    B = math.gcd(64, rows)
    while B >= 1 and not fits(B):
        B //= 2
    return B

def step_runs(model, B, T, device, autocast, errors, reserve=0):
    """(True, None) if one forward and backward of B sequences raises none of `errors` on any rank, with `reserve` bytes
    of memory held aside meanwhile, else (False, why): the same answer on every rank. Leaves no gradients behind."""
    model.zero_grad(set_to_none=True)
    why = None
    try:
        held, x = torch.empty(reserve, dtype=torch.uint8, device=device), torch.zeros(B, T, dtype=torch.long, device=device)
        with autocast:
            model(x, x)[1].backward()
    except errors as e:  # kept as a line of text: the exception's frames would hold on to the activations
        why = first_line(getattr(e, "inner_exception", None) or e)
    held = x = None
    model.zero_grad(set_to_none=True)
    ok = torch.tensor(float(why is None), device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(ok, torch.distributed.ReduceOp.MIN)
    return bool(ok), why or "on another process"

def whole_copy(model):
    """An FSDP model's weights whole on every rank (all-gathers, every rank joins them) in a plain GPT."""
    with torch.device("meta"):  # no memory, no random init: the weights come next
        copy = GPT(model.config)
    copy.load_state_dict({k: v.full_tensor() for k, v in model.state_dict().items() if k != "lm_head.weight"}, strict=False, assign=True)
    copy.lm_head.weight = copy.transformer.wte.weight  # tied, as in the model: gathered once
    return copy

def import_wandb():
    try:
        import wandb  # only with --wandb: it is optional and slow to import
        return wandb
    except ImportError:
        raise InputError("--wandb needs the wandb package: pip install wandb, or leave out --wandb")

def train(cfg):
    rank, local_rank, world_size, device = setup_distributed(cfg.device)
    ddp, master = torch.distributed.is_initialized(), rank == 0
    log = print if master else (lambda *args, **kwargs: None)

    # everything that can refuse the run does so before anything is written
    from plot import RunLog  # siblings are imported where they are used, so that imports run one way

    log_dir = Path(cfg.log_dir)
    resume_path, checkpoint = checkpoint_to_resume(log_dir, cfg.resume, cfg, log)
    wandb = import_wandb() if cfg.wandb and master else None
    enc = gpt2_tokenizer() if cfg.sample_interval and master else None  # rank 0 prints the samples
    if enc:
        from sample import generate
    if cfg.hellaswag_interval:
        import hellaswag

        hella_examples = hellaswag.load_examples(cfg.hellaswag_dir or hellaswag.DATA_DIR, "val", cfg.hellaswag_limit)

    # B: as given; on a resume, the run's own; else the largest of 64, 32 ... that divides the step's sequences (on a GPU
    # then halved until a step fits, below). The data are read here with it, before the model is built or fitted
    T, saved_args = cfg.seq_len, checkpoint.get("args") if checkpoint is not None and isinstance(checkpoint.get("args"), dict) else {}
    B = cfg.batch_size or saved_args.get("batch_size") or fit_batch_size(cfg.total_batch_size // (T * world_size), lambda b: True)
    if cfg.total_batch_size % (B * T * world_size):
        raise InputError(f"--total_batch_size {cfg.total_batch_size} is not a multiple of batch_size x seq_len x processes = "
                         f"{B} x {T} x {world_size} = {B * T * world_size}; change one of them")
    train_loader = DataLoaderLite(cfg.data_dir, "train", B, T, rank, world_size, shuffle=cfg.shuffle, seed=cfg.seed)
    val_loader = DataLoaderLite(cfg.data_dir, "val", B, T, rank, world_size)
    val_seqs = min(cfg.val_tokens, val_loader.total_tokens - 1) // T
    if val_seqs == 0:
        raise InputError(f"the val split holds {val_loader.total_tokens} tokens, fewer than one sequence of --seq_len {T} + 1")

    autocast, dtype, why = make_autocast(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    raw_model = initial_model(cfg, checkpoint, log).to(device)
    # FSDP2, in place: each Block, then the root (embeddings, ln_f, the tied lm_head), all-gathered in turn. bf16 stays
    # autocast's, not FSDP's MixedPrecisionPolicy: DDP's numerics, so a run moves between the two through a checkpoint
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard
        for module in (*raw_model.transformer.h, raw_model):
            fully_shard(module)
    if cfg.batch_size is None and checkpoint is None and device.type == "cuda":
        # what training adds later is held aside: AdamW's two moments and DDP's buckets, three more copies of the weights
        # (under FSDP of this rank's shards, plus the whole gradients that accumulation keeps between micro-steps)
        reserve = 3 * torch.cuda.memory_allocated(device) + (4 * raw_model.num_params() if cfg.fsdp else 0)
        B = max(1, fit_batch_size(B, lambda b: step_runs(raw_model, b, T, device, autocast, torch.OutOfMemoryError, reserve)[0]))
        log(f"--batch_size {B}: the largest of 64, 32, 16 ... whose forward and backward fit in this GPU's memory (1: none does)")
    cfg.batch_size = train_loader.B = B  # main's out-of-memory line names it
    grad_accum_steps = cfg.total_batch_size // (B * T * world_size)

    model = raw_model
    if cfg.compile if cfg.compile is not None else device.type == "cuda":
        # tried on one step first: without Triton or a working C++ compiler the run goes on eagerly, on every rank
        works, failure = step_runs(compiled := torch.compile(raw_model), B, T, device, autocast, torch._dynamo.exc.BackendCompilerFailed)
        model = compiled if works else raw_model
        if not works:
            log(f"torch.compile cannot compile here ({failure}): training without it, slower, with the same losses; --no-compile skips the attempt")
    compile_on = model is not raw_model
    if ddp and not cfg.fsdp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.max_lr, device.type)
    # float16's range ends at 65504: the loss is scaled up so small gradients do not flush to zero, and a step whose
    # gradients overflowed is skipped with a smaller scale (Micikevicius et al. 2018, mixed precision training)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start_step, val_loss = 0, None
    if checkpoint is not None:
        start_step, val_loss = restore_training_state(resume_path, checkpoint, raw_model, optimizer, scaler, train_loader, device, local_rank, cfg, log)
    run_log = RunLog(log_dir if master else None, checkpoint, cfg, wandb)

    log(f"model {resume_path or cfg.init_from or cfg.model or 'gpt2'}: {raw_model.num_params():,} parameters, {raw_model.config}")
    log(f"device {device}, {str(dtype)[6:]}{' autocast' if dtype != torch.float32 else ''} ({why}), compile {'on' if compile_on else 'off'}, {world_size} process(es)")
    local_bytes = sum((p.to_local() if cfg.fsdp else p).nbytes for p in raw_model.parameters())
    log(f"{4 * local_bytes:,} bytes of weights, gradients and AdamW moments per process (fp32; {f'1/{world_size} of them: FSDP' if cfg.fsdp else 'all of them'})")
    log(f"{cfg.total_batch_size:,} tokens per step = {B} x {T} x {world_size} processes x {grad_accum_steps} accumulation steps")
    log(f"train split {train_loader.total_tokens:,} tokens in {len(train_loader.shards)} shards, val split {val_loader.total_tokens:,} tokens")
    if cfg.val_tokens > val_loader.total_tokens - 1:
        log(f"the val split has fewer than --val_tokens {cfg.val_tokens:,} tokens: evaluating all {val_seqs * T:,} of them")
    flops_per_step, peak = raw_model.flops_per_token(T) * cfg.total_batch_size, peak_flops(device)

    for step in range(start_step, cfg.max_steps + 1):
        last_step = step == cfg.max_steps
        resumed_here = checkpoint is not None and step == start_step  # evaluated and saved before the interruption

        def due(interval):  # the one rule for periodic work: every `interval` steps (0: never) and after the last
            return not resumed_here and (last_step or (interval > 0 and step % interval == 0))

        # under FSDP on a whole copy of the weights, held meanwhile: ranks score different numbers of batches, rank 0
        # alone samples, and generation calls hidden_states and lm_head, which FSDP's forward hooks do not gather
        whole = whole_copy(raw_model) if cfg.fsdp and any(map(due, (cfg.eval_interval, cfg.hellaswag_interval, cfg.sample_interval))) else None
        if due(cfg.eval_interval):
            val_loss = evaluate(whole or model, val_loader, val_seqs, B, rank, world_size, device, autocast)
            run_log.event(step, "val", val_loss)
        if cfg.hellaswag_interval and due(cfg.hellaswag_interval):
            # B // 4 examples of 4 rows per forward: about a training micro-batch's memory
            n, _, n_correct_norm = hellaswag.evaluate(whole or raw_model, hella_examples, T, device, autocast, max(1, B // 4), rank, world_size)
            run_log.event(step, "hella", n_correct_norm / n)
        if due(cfg.eval_interval) or (cfg.hellaswag_interval and due(cfg.hellaswag_interval)):
            run_log.plot()
        if step > 0 and due(cfg.checkpoint_interval):  # every rank: under FSDP the state is gathered
            state = training_state(step, val_loss, raw_model, optimizer, scaler, train_loader, device, cfg, run_log.wandb_run, keep=master)
            if master:
                save_checkpoint(log_dir / f"model_{step:05d}.pt", state)
        if last_step:
            break
        if enc and step > 0 and due(cfg.sample_interval):
            # their own generator leaves the training RNG, and so a resume, as it was
            prompt = torch.tensor([enc.encode("Hello, I'm a language model,")] * 4, device=device)
            with autocast:
                rows = generate(whole or raw_model, prompt, 32, top_k=50, generator=torch.Generator(device=device).manual_seed(cfg.seed + step))
            for i, row in enumerate(rows.tolist()):
                log(f"sample {i}: {enc.decode(row)!r}")

        whole = None  # its memory is the step's
        # one optimizer step, timed on its own
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device)
        for micro_step in range(grad_accum_steps):
            x, y = train_loader.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # DDP decides in forward whether the backward all-reduces: only the last micro-step syncs
            sync = not ddp or micro_step == grad_accum_steps - 1
            if cfg.fsdp:  # FSDP2's no_sync, set before the backward: the reduce-scatter happens on the last micro-step only
                raw_model.set_requires_gradient_sync(sync)
            with contextlib.nullcontext() if sync or cfg.fsdp else model.no_sync():
                with autocast:
                    _, loss = model(x, y)
                loss = loss / grad_accum_steps  # the gradient of the mean over the whole batch, not the sum
                loss_accum += loss.detach()
                scaler.scale(loss).backward()
        if ddp:
            torch.distributed.all_reduce(loss_accum)  # gloo has no AVG: sum, then divide
            loss_accum /= world_size
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        scale = scaler.get_scale()
        scaler.step(optimizer)  # no update if float16 gradients overflowed (inf or nan)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        loss_value = loss_accum.item()
        if not math.isfinite(loss_value):
            raise InputError(f"step {step}: the loss is {loss_value}; training diverged (try a lower --max_lr), the checkpoints in {log_dir} are untouched")

        tokens_per_sec, norm_value = cfg.total_batch_size / dt, norm.item()
        mfu = flops_per_step / dt / world_size / peak if peak else None
        fp16 = f" | scale {scale:.0f}" if scaler.is_enabled() else ""
        if scaler.get_scale() < scale:  # lowered: this step's float16 gradients overflowed, and the optimizer skipped it
            fp16 += " | skipped: float16 gradients overflowed, scale lowered"
        log(f"step {step} | loss {loss_value:.6f} | lr {lr:.4e} | norm {norm_value:.4f} | dt {dt * 1000:.2f}ms | tok/sec {tokens_per_sec:.0f} | mfu {f'{100 * mfu:.2f}%' if mfu else 'n/a'}{fp16}")
        run_log.event(step, "train", loss_value)
        run_log.metrics(step, lr=lr, norm=norm_value, tok_per_sec=tokens_per_sec, **({"mfu": mfu} if mfu else {}))

    if run_log.wandb_run is not None:
        run_log.wandb_run.finish()

def main(argv=None):
    cfg = parse_args(argv)
    try:
        train(cfg)
    except InputError as e:
        raise SystemExit(str(e))
    except RuntimeError as e:  # out of memory: CUDA raises torch.OutOfMemoryError, a CPU's allocator a plain RuntimeError
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        B = cfg.batch_size
        with torch.device("meta"):  # the model's size without its memory
            model = f"the weights of {cfg.init_from or cfg.log_dir}" if cfg.init_from or cfg.resume else f"{cfg.model or 'gpt2'}, {GPT(make_model_config(cfg)).num_params() / 1e6:,.1f}M parameters"
        fix = f"pass --batch_size {B // 2} or less" if B and B > 1 else "a shorter --seq_len, a smaller model, or --fsdp over several GPUs"
        raise SystemExit(f"out of memory ({model}, --batch_size {B}, --seq_len {cfg.seq_len}): {fix}")
    finally:  # after an error too: a process group left behind makes NCCL warn on every rank
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

if __name__ == "__main__":
    # run main from the module train_gpt2, not from __main__: the siblings it imports (hellaswag, sample) import
    # train_gpt2, and would otherwise load a second copy of this file, with classes of the same names but not the same
    from train_gpt2 import main

    main()
