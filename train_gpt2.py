"""
GPT-2 (124M and up) in one file: the model, the token-shard loader and the training loop.

    python fineweb.py                                         # token shards into edu_fineweb10B/
    python train_gpt2.py                                      # one GPU (or CPU / MPS)
    torchrun --standalone --nproc_per_node=8 train_gpt2.py    # eight GPUs, DistributedDataParallel
    python train_gpt2.py --resume                             # continue from the newest checkpoint in log/

The defaults reproduce build-nanogpt's GPT-2 124M recipe on FineWeb-Edu 10B. This file is the part to read; the
machinery that makes a run robust lives beside it: hardware.py (device, precision, batch fitting, FSDP),
checkpoint.py (saving, loading and resuming), plot.py (log.txt, wandb), cli.py (flags and one-line errors).
Importing it defines things and nothing else: sample.py, hellaswag.py and the tests import the model from here.
"""

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import hellaswag
from checkpoint import (
    CheckpointPolicy,
    Interrupted,
    StopSignals,
    checkpoint_paths,
    checkpoint_to_resume,
    load_weights,
    lock_log_dir,
    restore_training_state,
    saved_args,
    training_state,
)
from cli import DEVICE_FLAG, DTYPE_FLAG, ArgumentParser, InputError, add_flags, check_at_least, first_line, flag
from hardware import (
    fit_to_memory,
    make_autocast,
    micro_batch_size,
    peak_flops,
    setup_distributed,
    shard,
    try_compile,
    whole_copy,
)
from plot import RunLog, import_wandb
from sample import generate
from tokenizer import GPT2_VOCAB_SIZE, gpt2_tokenizer

PADDED_VOCAB_SIZE = 50304  # 50257 rounded up to a multiple of 128 so the lm_head matmul tiles evenly on GPUs
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # OpenAI's checkpoints on the Hugging Face hub
# the matmul weights that Hugging Face's GPT-2 keeps in Conv1D layers, stored (in, out): transposed on the way
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


# -----------------------------------------------------------------------------
# the model
@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context, in tokens
    vocab_size: int = GPT2_VOCAB_SIZE  # rows of wte / lm_head; training pads it to PADDED_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    # beyond GPT-2: --recipe modern turns these on (the ones since modded-nanogpt's speedruns); each is also a flag
    rope: bool = False  # rotary position embeddings (Su et al. 2021) instead of learned ones (wpe)
    qk_norm: bool = False  # queries and keys RMS-normalized before attention (Dehghani et al. 2023)
    relu2: bool = False  # ReLU² in the MLP (So et al. 2021, Primer) instead of GELU
    rmsnorm: bool = False  # RMSNorm without a gain (Zhang & Sennrich 2019) instead of LayerNorm
    bias: bool = True  # biases in the linear layers and LayerNorms
    tied_head: bool = True  # lm_head shares wte's weights (Press & Wolf 2017)
    zero_init: bool = False  # the residual projections and an untied lm_head start at zero
    logit_softcap: float = 0.0  # logits squashed to (-cap, cap) by cap·tanh(logits / cap) (Gemma 2); 0: off


# architecture presets: OpenAI's four GPT-2 sizes, plus small ones that train in minutes on a laptop CPU
MODEL_PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),  # 16M, 13M of it the token embedding
    "micro": dict(n_layer=2, n_head=2, n_embd=64, block_size=128),  # 3.3M: smoke tests
}


def layer_norm(config):
    if config.rmsnorm:
        return nn.RMSNorm(config.n_embd, elementwise_affine=False)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def rotary(pos, head_size, base=10000.0):
    """cos and sin (T, head_size) of rotary embeddings: pair (i, i + head_size/2) of each query and key turns by the
    angle pos·base^(-2i/head_size), so that their dot product depends on the distance between them alone."""
    inv_freq = base ** -(torch.arange(0, head_size, 2, device=pos.device, dtype=torch.float32) / head_size)
    angles = pos.float()[:, None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # query, key and value projections in one matmul, as in the GPT-2 checkpoint (c_attn)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_SCALE_INIT = True
        self.n_head, self.n_embd, self.qk_norm = config.n_head, config.n_embd, config.qk_norm

    def forward(self, x, rotary=None, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.qk_norm:  # unit-RMS queries and keys: the attention logits cannot grow without bound
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        mask = None
        if kv_cache is not None:  # generation (sample.py): every cached key and value, and which each query sees
            k, v, mask = kv_cache.update(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 was trained with GELU's tanh approximation; ReLU² is as good for less (Primer)
        self.activation = (lambda x: F.relu(x).square()) if config.relu2 else nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_SCALE_INIT = True

    def forward(self, x):
        return self.c_proj(self.activation(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = layer_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = layer_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rotary=None, kv_cache=None):
        # pre-LayerNorm (GPT-2 moved the norms in front of each sublayer) keeps a clean residual stream
        x = x + self.attn(self.ln_1(x), rotary, kv_cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                **({} if config.rope else dict(wpe=nn.Embedding(config.block_size, config.n_embd))),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=layer_norm(config),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tied_head:
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
            # zero_init: each block starts as the identity, and the untied head predicts uniformly (modded-nanogpt)
            untied_head = module is self.lm_head and not self.config.tied_head
            if self.config.zero_init and (hasattr(module, "RESIDUAL_SCALE_INIT") or untied_head):
                torch.nn.init.zeros_(module.weight)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(self, idx, kv_cache=None):
        """The final LayerNorm's output (B, T, n_embd), which logits() turns into logits: scorers (hellaswag.py) and
        generation (sample.py) compute logits only where they need them, the head's 50304 columns being most of
        the cost."""
        T = idx.size(1)
        assert T <= self.config.block_size, f"sequence of {T} exceeds block_size {self.config.block_size}"
        # generation's cache holds where its tokens go in a tensor: a compiled decode step then reads no changing int
        pos = kv_cache[0].positions(T) if kv_cache else torch.arange(T, device=idx.device)
        x, angles = self.transformer.wte(idx), None
        if self.config.rope:
            angles = rotary(pos, self.config.n_embd // self.config.n_head)
        else:
            x = x + self.transformer.wpe(pos)
        for i, block in enumerate(self.transformer.h):
            x = block(x, angles, kv_cache[i] if kv_cache else None)
        return self.transformer.ln_f(x)

    def logits(self, hidden):
        logits = self.lm_head(hidden)
        if cap := self.config.logit_softcap:  # in float32: tanh flattens close values that bf16 would round
            logits = cap * torch.tanh(logits.float() / cap)
        return logits

    def forward(self, idx, targets=None, kv_cache=None):
        logits = self.logits(self.hidden_states(idx, kv_cache))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
            # training backpropagates the loss alone; logits that required grad would make a compiled
            # backward fill and add a zero gradient of their full (B, T, 50304) size: a tenth of a CPU step
            logits = logits.detach()
        return logits, loss

    def num_params(self, non_embedding=False):
        """Parameters, a tied wte/lm_head counted once; non_embedding leaves out the lookup tables (wpe, and an
        untied wte), which cost no FLOPs."""
        n = sum(p.numel() for p in self.parameters())
        tables = [] if self.config.tied_head else [self.transformer.wte]
        tables += [self.transformer.wpe] if "wpe" in self.transformer else []
        return n - sum(t.weight.numel() for t in tables) if non_embedding else n

    def flops_per_token(self, T):
        """Training FLOPs per token (PaLM paper, appendix B): 6 per weight plus attention's 12·L·H·Q·T."""
        return 6 * self.num_params(non_embedding=True) + 12 * self.config.n_layer * self.config.n_embd * T

    @classmethod
    def from_pretrained(cls, name_or_path, check=lambda config: None):
        """GPT-2 weights from Hugging Face: a hub name (gpt2 ... gpt2-xl, downloads) or a save_pretrained folder.
        check(config) may refuse the architecture before the weights load."""
        local = Path(name_or_path).is_dir()
        if not local and name_or_path not in GPT2_NAMES:
            raise InputError(
                f"from_pretrained: {name_or_path!r} is neither a local folder nor one of {', '.join(GPT2_NAMES)}"
            )
        from transformers import AutoConfig, GPT2LMHeadModel  # slow to import: only once the name is known to be good

        try:  # the config first, one small file: another architecture is refused before its weights load
            hc = AutoConfig.from_pretrained(name_or_path)
            activation = getattr(hc, "activation_function", None)
            plain = hc.model_type == "gpt2" and activation == "gelu_new"
            if not plain or hc.scale_attn_by_inverse_layer_idx or hc.reorder_and_upcast_attn:
                kind = f"{hc.model_type}, activation {activation}"
                raise InputError(f"from_pretrained: {name_or_path!r} is not a plain GPT-2 ({kind})")
            dims = dict(block_size=hc.n_positions, vocab_size=hc.vocab_size, n_layer=hc.n_layer, n_head=hc.n_head)
            config = GPTConfig(**dims, n_embd=hc.n_embd)
            check(config)
            hf = GPT2LMHeadModel.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            fix = (
                "it is not a save_pretrained folder of a GPT-2"
                if local
                else "check the network, or pass a local folder"
            )
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
        path, checkpoint = load_weights(path, device)
        try:  # a config GPTConfig does not know, or weights of other names or shapes: written by something else
            model = cls(GPTConfig(**checkpoint["config"])).to(device)
            model.load_state_dict(checkpoint["model"])
        except (TypeError, ValueError, RuntimeError) as e:
            why = first_line(e)
            raise InputError(f"{path} is not a train_gpt2.py checkpoint: its weights do not fit its config ({why})")
        return model

    def configure_optimizers(self, weight_decay, learning_rate, device_type, muon_lr=None, embed_lr=None):
        """AdamW (GPT-2's recipe); with muon_lr, Muon for the blocks' matrices and AdamW for the rest, embed_lr
        (default learning_rate) that of the embeddings. Each group's "lr" is its peak, which the schedule scales."""
        params = [p for p in self.parameters() if p.requires_grad]
        matrices = [p for p in self.transformer.h.parameters() if p.dim() == 2] if muon_lr else []
        embeddings = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]
        tables = [p for p in embeddings if p is not self.lm_head.weight] if muon_lr else []  # a tied one: the head's
        rest = [p for p in params if all(p is not q for q in matrices + tables)]
        # decay the matmul weights and embeddings only: biases and LayerNorm gains stay free (GPT-3 paper)
        groups = [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        ]
        if muon_lr:
            groups.append({"params": tables, "weight_decay": weight_decay, "lr": embed_lr or learning_rate})
        fused = device_type in ("cuda", "cpu")  # one kernel for all parameters instead of one per tensor
        groups = [group for group in groups if group["params"]]
        adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95), eps=1e-8, fused=fused)
        if not muon_lr:
            return adamw
        # Muon steps each hidden matrix along its momentum orthogonalized (Jordan et al. 2024, torch's defaults:
        # momentum 0.95, Nesterov, 5 Newton-Schulz iterations); an embedding's rows are lookups, not a matrix
        return MuonAdamW(torch.optim.Muon(matrices, lr=muon_lr, weight_decay=0.0), adamw)


class MuonAdamW:
    """Muon and AdamW as one optimizer to the training loop, the gradient scaler and the checkpoint: their
    param_groups (Muon's first), zero_grad and step, and one state dict numbered as a single optimizer's."""

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw
        self.n_muon = sum(len(group["params"]) for group in muon.param_groups)

    @property
    def param_groups(self):
        return self.muon.param_groups + self.adamw.param_groups

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def step(self):
        self.muon.step()
        self.adamw.step()

    def state_dict(self):
        muon, adamw = self.muon.state_dict(), self.adamw.state_dict()
        groups = [{**g, "params": [i + self.n_muon for i in g["params"]]} for g in adamw["param_groups"]]
        state = {**muon["state"], **{i + self.n_muon: s for i, s in adamw["state"].items()}}
        return {"state": state, "param_groups": muon["param_groups"] + groups}

    def load_state_dict(self, state_dict):
        k, n = len(self.muon.param_groups), self.n_muon
        groups, state = state_dict["param_groups"], state_dict["state"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer has other parameter groups")
        self.muon.load_state_dict({"state": {i: s for i, s in state.items() if i < n}, "param_groups": groups[:k]})
        adamw_groups = [{**g, "params": [i - n for i in g["params"]]} for g in groups[k:]]
        self.adamw.load_state_dict(
            {"state": {i - n: s for i, s in state.items() if i >= n}, "param_groups": adamw_groups}
        )


# -----------------------------------------------------------------------------
# data: uint16 token shards written by fineweb.py
def load_shard(path):
    """Memory-map one shard, refusing anything but a 1-D uint16 array of GPT-2 token ids."""
    rewrite = "rewrite it with fineweb.py"
    try:
        tokens = np.load(path, mmap_mode="r")
    except OSError as e:
        raise InputError(f"shard {path} cannot be read ({e})")
    except (ValueError, EOFError):
        raise InputError(f"shard {path} is not a .npy array (truncated, or another format); {rewrite}")
    if tokens.ndim != 1 or tokens.dtype != np.uint16:
        kind = f"a {tokens.dtype} array of shape {tokens.shape}"
        raise InputError(f"shard {path} holds {kind}, expected 1-D uint16 tokens; {rewrite}")
    # checked up front (a second or so per GB) so a bad shard stops the run before it writes anything
    if len(tokens) and (largest := int(tokens.max())) >= GPT2_VOCAB_SIZE:
        raise InputError(
            f"shard {path} holds token id {largest}, but GPT-2 has {GPT2_VOCAB_SIZE} tokens: it was not written by"
            " fineweb.py"
        )
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
            raise InputError(
                f"no {split} shards (*_{split}_*.npy) in {data_dir}: run fineweb.py first, or point --data_dir at its"
                " output"
            )
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
            raise InputError(
                f"the checkpoint read a split of {state['total_tokens']} tokens, --data_dir now holds"
                f" {self.total_tokens}: resume with the data it was trained on"
            )
        self.position = state["position"]


# -----------------------------------------------------------------------------
# training configuration: its fields are the command-line flags, and --recipe sets some of their defaults
RECIPES = {
    "gpt2": {},  # the defaults below: GPT-2's architecture, trained as build-nanogpt does (GPT-3's AdamW and schedule)
    # modded-nanogpt's first records (Jordan et al. 2024), in a few switches; the learning rates: the best of a grid
    # at a small scale (bench.py --only recipes, docs/performance.md), the soft-cap Gemma 2's order of magnitude
    "modern": dict(rope=True, qk_norm=True, relu2=True, rmsnorm=True, bias=False, tied_head=False, zero_init=True)
    | dict(logit_softcap=15.0, muon_lr=0.04, embed_lr=0.012, max_lr=0.006, warmup_steps=10, schedule="wsd"),
}
WSD_DECAY = 0.4  # the fraction of the steps over which --schedule wsd decays linearly to zero (modded-nanogpt's)


@dataclass
class TrainConfig:
    data_dir: str = flag("edu_fineweb10B", "folder of uint16 token shards written by fineweb.py")
    log_dir: str | None = flag(None, "where log.txt and the checkpoints go (default: log/<run_name>, or log)")
    run_name: str | None = flag(None, "a name for this run: its log dir (unless --log_dir is given) and its wandb name")
    model: str | None = flag(
        None,
        "architecture preset (default: gpt2, or the weights' with --init_from or --resume)",
        choices=[*MODEL_PRESETS],
    )
    n_layer: int | None = flag(None, "number of layers (default: the preset's)")
    n_head: int | None = flag(None, "number of attention heads (default: the preset's)")
    n_embd: int | None = flag(None, "embedding width (default: the preset's)")
    recipe: str = flag(
        "gpt2",
        "gpt2: GPT-2's, as build-nanogpt trains it; modern: the defaults of RECIPES['modern']",
        choices=[*RECIPES],
    )
    rope: bool | None = flag(None, "rotary position embeddings instead of learned ones (default: off, or the weights')")
    qk_norm: bool | None = flag(None, "RMS-normalize queries and keys (default: off, or the weights')")
    relu2: bool | None = flag(None, "ReLU² in the MLP instead of GELU (default: off, or the weights')")
    rmsnorm: bool | None = flag(None, "RMSNorm instead of LayerNorm (default: off, or the weights')")
    bias: bool | None = flag(None, "biases in the linear layers and LayerNorms (default: on, or the weights')")
    tied_head: bool | None = flag(None, "lm_head tied to the token embedding (default: on, or the weights')")
    zero_init: bool | None = flag(None, "start the residual projections and an untied head at zero (default: off)")
    logit_softcap: float | None = flag(None, "cap the logits smoothly at ± this (default: 0, off, or the weights')")
    init_from: str | None = flag(
        None,
        "start from these weights, with a fresh optimizer: gpt2 ... gpt2-xl (downloaded), a save_pretrained folder,"
        " or one of our checkpoints (model_*.pt, or a log dir: its newest)",
    )
    batch_size: int | None = flag(
        None,
        "B: sequences per micro-step per process (default: 64, or the largest power of two dividing the step's"
        " sequences; on a GPU then halved until a step fits; on a resume the run's)",
    )
    seq_len: int = flag(1024, "T: tokens per sequence (at most the preset's block_size)")
    total_batch_size: int = flag(
        524288, "tokens per optimizer step (2**19, ~0.5M, GPT-3 small's); accumulation makes up B·T"
    )
    max_lr: float = flag(6e-4, "peak learning rate (GPT-3 small's) of AdamW, of all but --muon_lr's matrices")
    muon_lr: float | None = flag(None, "Muon at this peak lr for the blocks' matrices (default: none, AdamW for all)")
    embed_lr: float | None = flag(None, "with --muon_lr, AdamW's peak lr for the embeddings (default: --max_lr)")
    schedule: str = flag(
        "cosine",
        "cosine: decay to 10%% of the peak (GPT-3); wsd: constant, then linear decay to 0",
        choices=["cosine", "wsd"],
    )
    warmup_steps: int = flag(715, "steps of linear warmup (375M tokens, as in GPT-3)")
    max_steps: int = flag(19073, "optimizer steps (19073 x 524288 tokens = 10B tokens, one epoch of FineWeb-Edu 10B)")
    weight_decay: float = flag(0.1, "AdamW weight decay on matmul weights and embeddings")
    grad_clip: float = flag(1.0, "clip the global gradient norm to this")
    eval_interval: int = flag(250, "steps between validation runs (0: only at the end)")
    val_tokens: int = flag(10485760, "tokens of the val split to evaluate, all processes together")
    hellaswag_interval: int = flag(250, "steps between HellaSwag scorings (0: never)")
    hellaswag_limit: int | None = flag(None, "score only the first N HellaSwag val examples (default: all 10,042)")
    hellaswag_dir: str | None = flag(None, "folder of hellaswag_val.jsonl, downloaded if missing (default: hellaswag/)")
    sample_interval: int = flag(250, "steps between printed samples (0: never)")
    checkpoint_interval: int = flag(5000, "steps between checkpoints (one is always written at the end)")
    checkpoint_minutes: float = flag(30.0, "also save every this many minutes, keeping only the newest (0: never)")
    keep_checkpoints: int | None = flag(None, "keep the newest N of the interval checkpoints (default: all)")
    resume: bool = flag(False, "continue from the newest checkpoint in --log_dir")
    compile: bool | None = flag(None, "torch.compile the model (default: on for CUDA, off elsewhere)")
    fsdp: bool = flag(
        False, "under torchrun: shard weights, gradients and AdamW state (FSDP2) instead of copying (DDP)"
    )
    dtype: str = flag(**DTYPE_FLAG)
    device: str = flag(**DEVICE_FLAG)
    shuffle: bool = flag(True, "visit the train shards in a new seeded order every epoch")
    seed: int = flag(1337, "seed for initialization, shard order and samples")
    wandb: bool = flag(False, "also log to Weights & Biases (pip install wandb; WANDB_MODE=offline needs no network)")
    wandb_project: str = flag("gpt2-kit", "the wandb project to log to")


POSITIVE_FLAGS = ["batch_size", "seq_len", "total_batch_size", "max_steps", "val_tokens", "hellaswag_limit"]
POSITIVE_FLAGS += ["keep_checkpoints"]
INTERVAL_FLAGS = ["warmup_steps", "eval_interval", "hellaswag_interval", "sample_interval", "checkpoint_interval"]
INTERVAL_FLAGS += ["checkpoint_minutes", "logit_softcap"]
SWITCHES = ["rope", "qk_norm", "relu2", "rmsnorm", "bias", "tied_head", "zero_init", "logit_softcap"]  # beyond GPT-2
ARCHITECTURE_FLAGS = ["n_layer", "n_head", "n_embd", *SWITCHES]


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_flags(parser, TrainConfig)
    recipe = ArgumentParser(add_help=False)  # read first, so that --help shows the recipe's defaults
    recipe.add_argument("--recipe", default="gpt2", choices=[*RECIPES])
    parser.set_defaults(**RECIPES[recipe.parse_known_args(argv)[0].recipe])  # a flag given still wins
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    check_at_least(parser, cfg, 1, POSITIVE_FLAGS + ["n_layer", "n_head", "n_embd"])
    check_at_least(parser, cfg, 0, INTERVAL_FLAGS)
    if cfg.val_tokens < cfg.seq_len:
        parser.error(f"--val_tokens {cfg.val_tokens} is less than one sequence of --seq_len {cfg.seq_len}")
    if cfg.max_lr <= 0 or cfg.grad_clip <= 0 or cfg.weight_decay < 0:
        parser.error("--max_lr and --grad_clip must be positive and --weight_decay not negative")
    if any(lr is not None and lr <= 0 for lr in (cfg.muon_lr, cfg.embed_lr)):
        parser.error("--muon_lr and --embed_lr must be positive (leave --muon_lr out for AdamW alone)")
    if cfg.muon_lr and not hasattr(torch.optim, "Muon"):
        parser.error(
            f"--muon_lr (--recipe modern) needs torch.optim.Muon, in torch 2.9 and later; this is {torch.__version__}"
        )
    name = cfg.run_name
    if name is not None and (not name.strip() or Path(name).name != name or name in (".", "..")):
        parser.error(f"--run_name {cfg.run_name!r} must be a plain folder name such as gpt2-run1")
    if cfg.fsdp and cfg.muon_lr:
        parser.error("--fsdp with Muon (--muon_lr): torch's Muon would orthogonalize each shard, not the matrix")
    if cfg.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        parser.error("--fsdp shards the model across processes: launch with torchrun --nproc_per_node=N (N > 1)")
    if cfg.log_dir is None:
        cfg.log_dir = str(Path("log", cfg.run_name or ""))
    if cfg.init_from is None:  # else the weights' architecture, checked once they are loaded
        check_model_config(parser, make_model_config(cfg), cfg)
    return cfg


def check_model_config(parser, model_config, args):
    if model_config.n_embd % model_config.n_head:
        parser.error(f"--n_embd {model_config.n_embd} is not divisible by --n_head {model_config.n_head}")
    if args.seq_len > model_config.block_size:
        parser.error(
            f"--seq_len {args.seq_len} exceeds the {args.model or 'gpt2'} block_size of {model_config.block_size}"
        )


def asked_architecture(cfg, default=None):
    """The architecture the flags ask for: --model's preset (or default's), --n_layer, --n_head, --n_embd over it."""
    overrides = {k: getattr(cfg, k, None) for k in ARCHITECTURE_FLAGS if getattr(cfg, k, None) is not None}
    return {**MODEL_PRESETS.get(cfg.model or default, {}), **overrides}


def make_model_config(cfg):
    return GPTConfig(**asked_architecture(cfg, default="gpt2"), vocab_size=PADDED_VOCAB_SIZE)


def check_architecture(config, cfg, source):
    """The architecture flags given (--model, --n_layer, ...) must be those of the weights a run starts from."""
    if not isinstance(config, dict) or set(config) - {f.name for f in dataclasses.fields(GPTConfig)}:
        raise InputError(f"{source} holds no GPTConfig ({config!r}): it was not written by train_gpt2.py")
    if (vocab := config.get("vocab_size", GPT2_VOCAB_SIZE)) < GPT2_VOCAB_SIZE:  # the data's ids would index past it
        raise InputError(
            f"{source} has a vocabulary of {vocab}, fewer than GPT-2's {GPT2_VOCAB_SIZE} tokens in the shards"
        )
    if differ := {k: v for k, v in asked_architecture(cfg).items() if config.get(k) != v}:
        raise InputError(
            f"{source} was trained with {config}, but the flags ask for {differ}: leave out the architecture flags"
            " (--recipe modern sets some), or match them"
        )
    if cfg.seq_len > (block_size := config.get("block_size", cfg.seq_len)):
        raise InputError(
            f"--seq_len {cfg.seq_len} exceeds the block_size {block_size} of {source}: pass --seq_len {block_size}"
            " or less"
        )


def get_lr(step, cfg, max_lr=None):
    """Linear warmup, then cosine decay to 10% of max_lr (default --max_lr) at max_steps (GPT-3 paper, appendix B);
    or (--schedule wsd) warmup, constant, then a linear decay to zero over the last WSD_DECAY of the steps."""
    max_lr = max_lr or cfg.max_lr
    if step < cfg.warmup_steps:
        return max_lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        return max_lr * min(1.0, (cfg.max_steps - step) / (WSD_DECAY * cfg.max_steps))
    min_lr = 0.1 * max_lr
    if step >= cfg.max_steps:
        return min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


# -----------------------------------------------------------------------------
# the training script: setup in named steps, then the loop
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
    ours = source.is_file() or (source.is_dir() and checkpoint_paths(source))  # else a hub name or HF folder

    def check(config):
        check_architecture(dataclasses.asdict(config), cfg, f"--init_from {cfg.init_from}")

    model = GPT.from_checkpoint(source) if ours else GPT.from_pretrained(cfg.init_from, check)
    check(model.config)
    return model


def periodic_work(step, cfg, resumed_at):
    """The jobs due before optimizer step `step`: each every its interval (0: never); after the last step an
    evaluation, HellaSwag (unless never) and a checkpoint; at step 0 no checkpoint or sample of the initial weights;
    and nothing at the step a resume starts from, where it all ran before the interruption."""
    if step == resumed_at:
        return set()
    intervals = dict(val=cfg.eval_interval, hella=cfg.hellaswag_interval, sample=cfg.sample_interval)
    due = {job for job, n in {**intervals, "checkpoint": cfg.checkpoint_interval}.items() if n and step % n == 0}
    if step == cfg.max_steps:
        due |= {"val", "checkpoint"} | ({"hella"} if cfg.hellaswag_interval else set())
    return due - {"checkpoint", "sample"} if step == 0 else due


def val_sequences(cfg, val_loader):
    """How many sequences evaluation scores: --val_tokens' worth, or all that the val split holds."""
    n_tokens, T = val_loader.total_tokens, cfg.seq_len
    if n_tokens - 1 < T:
        raise InputError(f"the val split holds {n_tokens} tokens, fewer than one sequence of --seq_len {T} + 1")
    return min(cfg.val_tokens, n_tokens - 1) // T


def describe_run(log, cfg, resume_path, model, precision, train_loader, val_loader):
    """The run's setup, printed once before the first step."""
    (device, dtype, why, compiled), world_size = precision, train_loader.world_size
    source = resume_path or cfg.init_from or cfg.model or "gpt2"
    log(f"model {source}: {model.num_params():,} parameters, {model.config}")
    autocast = " autocast" if dtype != torch.float32 else ""
    compile = "on" if compiled else "off"
    log(f"device {device}, {str(dtype)[6:]}{autocast} ({why}), compile {compile}, {world_size} process(es)")
    local_bytes = sum((p.to_local() if cfg.fsdp else p).nbytes for p in model.parameters())
    share = f"1/{world_size} of them: FSDP" if cfg.fsdp else "all of them"
    log(f"{4 * local_bytes:,} bytes of weights, gradients and AdamW moments per process (fp32; {share})")
    B, T = train_loader.B, train_loader.T
    grad_accum_steps = cfg.total_batch_size // (B * T * world_size)
    steps = f"{B} x {T} x {world_size} processes x {grad_accum_steps} accumulation steps"
    log(f"{cfg.total_batch_size:,} tokens per step = {steps}")
    n_train, n_val = train_loader.total_tokens, val_loader.total_tokens
    log(f"train split {n_train:,} tokens in {len(train_loader.shards)} shards, val split {n_val:,} tokens")
    if cfg.val_tokens > n_val - 1:
        n_seqs = val_sequences(cfg, val_loader)
        evaluated = f"evaluating all {n_seqs * T:,} of them"
        log(f"the val split has fewer than --val_tokens {cfg.val_tokens:,} tokens: {evaluated}")


def print_samples(model, enc, device, autocast, seed, log):
    """Four continuations of GPT-2's demo prompt, from a generator of their own: the training RNG, and so a resume,
    stays as it was."""
    prompt = torch.tensor([enc.encode("Hello, I'm a language model,")] * 4, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with autocast:
        rows = generate(model, prompt, 32, top_k=50, generator=generator)
    for i, row in enumerate(rows.tolist()):
        log(f"sample {i}: {enc.decode(row)!r}")


def build_model(cfg, checkpoint, B, T, device, autocast, log):
    """(raw_model, model, B, compiled): the model a run starts from, on its device, sharded by FSDP or not; B fitted
    to a GPU's memory unless given; compiled if asked and it works; wrapped for DDP under torchrun."""
    torch.manual_seed(cfg.seed)
    raw_model = initial_model(cfg, checkpoint, log).to(device)
    if cfg.fsdp:
        shard(raw_model)
    if cfg.batch_size is None and checkpoint is None and device.type == "cuda":
        B = fit_to_memory(raw_model, B, T, device, autocast, cfg.fsdp)
        fitted = "the largest of 64, 32, 16 ... whose forward and backward fit in this GPU's memory (1: none does)"
        log(f"--batch_size {B}: {fitted}")
    model = raw_model
    if cfg.compile if cfg.compile is not None else device.type == "cuda":
        model = try_compile(raw_model, B, T, device, autocast, log)
    compiled = model is not raw_model
    if torch.distributed.is_initialized() and not cfg.fsdp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return raw_model, model, B, compiled


def train(cfg, signals=None):
    rank, local_rank, world_size, device = setup_distributed(cfg.device)
    ddp, master = torch.distributed.is_initialized(), rank == 0
    log = print if master else lambda *args, **kwargs: None

    # everything that can refuse the run does so before anything is written
    log_dir = Path(cfg.log_dir)
    resume_path, checkpoint = checkpoint_to_resume(log_dir, cfg.resume, lambda c, p: check_architecture(c, cfg, p), log)
    wandb = import_wandb() if cfg.wandb and master else None
    enc = gpt2_tokenizer() if cfg.sample_interval and master else None  # rank 0 prints the samples
    if cfg.hellaswag_interval:
        hella_examples = hellaswag.load_examples(cfg.hellaswag_dir or hellaswag.DATA_DIR, "val", cfg.hellaswag_limit)
    B, T = micro_batch_size(cfg, saved_args(checkpoint).get("batch_size"), world_size), cfg.seq_len
    train_loader = DataLoaderLite(cfg.data_dir, "train", B, T, rank, world_size, shuffle=cfg.shuffle, seed=cfg.seed)
    val_loader = DataLoaderLite(cfg.data_dir, "val", B, T, rank, world_size)
    val_seqs = val_sequences(cfg, val_loader)

    # the model in its precision, its micro-batch fitted to the GPU, compiled, wrapped for DDP; the optimizer
    autocast, dtype, why = make_autocast(cfg.dtype, device)
    raw_model, model, B, compiled = build_model(cfg, checkpoint, B, T, device, autocast, log)
    cfg.batch_size = train_loader.B = B  # main's out-of-memory line names it
    grad_accum_steps = cfg.total_batch_size // (B * T * world_size)
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.max_lr, device.type, cfg.muon_lr, cfg.embed_lr)
    peak_lrs = [group["lr"] for group in optimizer.param_groups]  # the schedule scales each group's own
    # float16's range ends at 65504: the loss is scaled up so small gradients do not flush to zero, and a step whose
    # gradients overflowed is skipped with a smaller scale (Micikevicius et al. 2018, mixed precision training)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start_step, val_loss = 0, None
    if checkpoint is not None:
        state = (raw_model, optimizer, scaler, train_loader, device, local_rank, cfg, log)
        start_step, val_loss = restore_training_state(resume_path, checkpoint, *state)
    lock = lock_log_dir(log_dir) if master else None  # noqa: F841  held while the run lasts: one run per log dir
    run_log = RunLog(log_dir if master else None, checkpoint, cfg, wandb)
    rolling = checkpoint is not None and not checkpoint.get("evaluated", True)  # a time-based or signal one
    policy = CheckpointPolicy(cfg, signals, master, device, resume_path if rolling else None)

    def save(step, evaluated=True):  # every rank: under FSDP the state is gathered
        state = (raw_model, optimizer, scaler, train_loader, device, cfg, run_log.wandb_run)
        return policy.save(step, {**training_state(step, val_loss, *state, keep=master), "evaluated": evaluated})

    describe_run(log, cfg, resume_path, raw_model, (device, dtype, why, compiled), train_loader, val_loader)
    flops_per_step, peak = raw_model.flops_per_token(T) * cfg.total_batch_size, peak_flops(device)
    # the evaluations at the step a resume starts from ran before the interruption, unless a signal saved it first
    resumed_at = start_step if checkpoint is not None and not rolling else None

    for step in range(start_step, cfg.max_steps + 1):
        due = periodic_work(step, cfg, resumed_at)
        # under FSDP on a whole copy of the weights, held meanwhile: ranks score different numbers of batches, rank 0
        # alone samples, and generation calls hidden_states and lm_head, which FSDP's forward hooks do not gather
        whole = whole_copy(raw_model, GPT) if cfg.fsdp and due - {"checkpoint"} else None
        if "val" in due:
            val_loss = evaluate(whole or model, val_loader, val_seqs, B, rank, world_size, device, autocast)
            run_log.event(step, "val", val_loss)
        if "hella" in due:
            # B // 4 examples of 4 rows per forward: about a training micro-batch's memory
            scoring = (T, device, autocast, max(1, B // 4), rank, world_size)
            n, _, n_correct_norm = hellaswag.evaluate(whole or raw_model, hella_examples, *scoring)
            run_log.event(step, "hella", n_correct_norm / n)
        if due & {"val", "hella"}:
            run_log.plot()
        if "checkpoint" in due:
            save(step)
        if step == cfg.max_steps:
            break
        if enc and "sample" in due:
            print_samples(whole or raw_model, enc, device, autocast, cfg.seed + step, log)
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
            if cfg.fsdp:  # FSDP2's no_sync, set before the backward: only the last micro-step reduce-scatters
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
        for group, peak_lr in zip(optimizer.param_groups, peak_lrs, strict=True):
            group["lr"] = get_lr(step, cfg, peak_lr)
        scale = scaler.get_scale()
        scaler.step(optimizer)  # no update if float16 gradients overflowed (inf or nan)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        loss_value, norm_value = loss_accum.item(), norm.item()
        if not math.isfinite(loss_value):
            raise InputError(
                f"step {step}: the loss is {loss_value}; training diverged (try a lower --max_lr), the checkpoints in"
                f" {log_dir} are untouched"
            )

        mfu = flops_per_step / dt / world_size / peak if peak else None
        extra = f" | scale {scale:.0f}" if scaler.is_enabled() else ""
        if scaler.get_scale() < scale:  # lowered: this step's float16 gradients overflowed, the optimizer skipped it
            extra += " | skipped: float16 gradients overflowed, scale lowered"
        run_log.step(step, cfg, loss_value, lr, norm_value, dt, mfu, extra)

        # a signal, or --checkpoint_minutes since the last checkpoint: save the state after this step
        signum, timed = policy.poll(step + 1)
        if signum or timed:
            path = save(step + 1, evaluated=False)  # before the next step's evaluations, which a resume then runs
        if signum:
            raise Interrupted(signum, step + 1, path)

    run_log.finish()


def out_of_memory(cfg):
    """main's one line for a run that ran out of memory: the model, the sizes, and what to lower."""
    if cfg.init_from or cfg.resume:
        model = f"the weights of {cfg.init_from or cfg.log_dir}"
    else:
        with torch.device("meta"):  # the model's size without its memory
            model = f"{cfg.model or 'gpt2'}, {GPT(make_model_config(cfg)).num_params() / 1e6:,.1f}M parameters"
    B = cfg.batch_size
    fix = (
        f"pass --batch_size {B // 2} or less"
        if B and B > 1
        else "a shorter --seq_len, a smaller model, or --fsdp over several GPUs"
    )
    return f"out of memory ({model}, --batch_size {B}, --seq_len {cfg.seq_len}): {fix}"


def main(argv=None):
    cfg = parse_args(argv)
    try:
        train(cfg, StopSignals())
    except Interrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(e)
        raise SystemExit(128 + e.signum)
    except InputError as e:
        raise SystemExit(str(e))
    except RuntimeError as e:  # out of memory: CUDA raises torch.OutOfMemoryError, a CPU's allocator a RuntimeError
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        raise SystemExit(out_of_memory(cfg))
    finally:  # after an error too: a process group left behind makes NCCL warn on every rank
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
