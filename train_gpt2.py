"""
GPT-2 (124M and up) in one file: the model, the token-shard loader and the training loop.

    python fineweb.py                                         # token shards into edu_fineweb10B/
    python train_gpt2.py                                      # one GPU (or CPU / MPS)
    torchrun --standalone --nproc_per_node=8 train_gpt2.py    # eight GPUs, DistributedDataParallel
    python train_gpt2.py --resume                             # continue from the newest in log/

The defaults reproduce build-nanogpt's GPT-2 124M recipe on FineWeb-Edu 10B. This file is the part
to read; the machinery that makes a run robust lives beside it and answers its questions: hardware.py
(which device, precision and batch size; does compile work; FSDP), checkpoint.py (saving, resuming,
signals), budget.py (the clock: eta, MFU, --plan, --time_budget), plot.py (log.txt, wandb), cli.py
(flags, one-line errors). Importing it defines things.
"""

import dataclasses
import functools
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

import budget
import checkpoint
import cli
import hardware
import hellaswag
import plot
from cli import InputError, first_line, flag
from tokenizer import GPT2_VOCAB_SIZE, gpt2_tokenizer

PADDED_VOCAB_SIZE = 50304  # 50257 rounded up to a multiple of 128: the lm_head matmul tiles evenly


# -----------------------------------------------------------------------------
# the model
@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context, in tokens
    vocab_size: int = GPT2_VOCAB_SIZE  # rows of wte and lm_head (padded in training)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    # beyond GPT-2, each also a flag: --recipe modern turns them on (modded-nanogpt's speedruns)
    rope: bool = False  # rotary position embeddings (Su et al. 2021) instead of learned ones (wpe)
    qk_norm: bool = False  # queries and keys RMS-normalized before attention (Dehghani et al. 2023)
    relu2: bool = False  # ReLU² in the MLP (So et al. 2021, Primer) instead of GELU
    rmsnorm: bool = False  # RMSNorm without a gain (Zhang & Sennrich 2019) instead of LayerNorm
    bias: bool = True  # biases in the linear layers and LayerNorms
    tied_head: bool = True  # lm_head shares wte's weights (Press & Wolf 2017)
    zero_init: bool = False  # the residual projections and an untied lm_head start at zero
    logit_softcap: float = 0.0  # logits squashed: cap·tanh(logits / cap) (Gemma 2); 0: off
    embed_norm: bool = False  # a norm between the embedding and the first block (modded-nanogpt)
    split_qkv: bool = False  # q, k, v as three matrices (c_q, c_k, c_v): Muon's, one by one


# architecture presets: OpenAI's four GPT-2 sizes, and small ones that train in minutes on a laptop
MODEL_PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),  # 16M, 13M of it embeddings
    "micro": dict(n_layer=2, n_head=2, n_embd=64, block_size=128),  # 3.3M: smoke tests
}


def layer_norm(config):
    if config.rmsnorm:
        return nn.RMSNorm(config.n_embd, elementwise_affine=False)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def rotary(pos, head_size, base=10000.0):
    """(cos, sin) (T, head_size) of rotary embeddings: pair (i, i + head_size/2) of a query or key
    turns by pos·base^(-2i/head_size), so that dot products depend on distances alone."""
    inv_freq = base ** -(torch.arange(0, head_size, 2, device=pos.device).float() / head_size)
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
        # query, key and value projections in one matmul, as in the GPT-2 checkpoint (c_attn); or three
        # matrices (nanochat's), so that Muon orthogonalizes each on its own
        if config.split_qkv:
            self.c_q, self.c_k, self.c_v = (nn.Linear(config.n_embd, config.n_embd, bias=config.bias) for _ in "qkv")
        else:
            self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_SCALE_INIT = True
        self.n_head, self.qk_norm, self.split_qkv = config.n_head, config.qk_norm, config.split_qkv

    def forward(self, x, cos_sin=None, kv_cache=None):
        B, T, C = x.size()
        q, k, v = (self.c_q(x), self.c_k(x), self.c_v(x)) if self.split_qkv else self.c_attn(x).split(C, dim=2)
        # (B, nh, T, hs): each head attends on its own
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:  # unit-RMS queries and keys: attention logits cannot grow without bound
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if cos_sin is not None:
            q, k = rotate(q, *cos_sin), rotate(k, *cos_sin)
        mask = None
        if kv_cache is not None:  # generation: all cached keys and values, and what each query sees
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

    def forward(self, x, cos_sin=None, kv_cache=None):
        # pre-LayerNorm (GPT-2 moved the norms in front of each sublayer) keeps a clean residual
        # stream
        x = x + self.attn(self.ln_1(x), cos_sin, kv_cache)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """One layer's keys and values during generation, in buffers as long as the context. The new
    tokens go to the slots from `pos` on, a (1,) tensor all layers share and generate() sets: every
    one-token step then has the same shapes and reads no changing Python number, so torch.compile
    captures it once (a CUDA graph with mode="reduce-overhead"). Attention covers every slot, a mask
    hiding those after each query's position."""

    def __init__(self, pos, block_size, static_address=False):
        self.pos, self.block_size, self.static_address = pos, block_size, static_address
        self.k = self.v = None  # allocated on first use, in the dtype autocast gives the keys

    def update(self, k, v):
        B, nh, T, hs = k.shape
        if self.k is None:
            # zeros, not empty: a hidden slot still enters the matmuls, and its weight 0 times a nan
            # would be nan
            self.k, self.v = (k.new_zeros(B, nh, self.block_size, hs) for _ in range(2))
            if self.static_address:  # a CUDA graph is skipped if it writes to an unmarked input
                for buffer in (self.k, self.v):
                    torch._dynamo.mark_static_address(buffer)
        pos = self.pos + torch.arange(T, device=self.pos.device)
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        mask = torch.arange(self.block_size, device=pos.device) <= pos[:, None]  # slots seen
        return self.k, self.v, mask


# the matmul weights Hugging Face's GPT-2 keeps in Conv1D layers, (in, out): transposed on the way
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                **({} if config.rope else dict(wpe=nn.Embedding(config.block_size, config.n_embd))),
                **(dict(ln_e=layer_norm(config)) if config.embed_norm else {}),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=layer_norm(config),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tied_head:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_SCALE_INIT", False):
                # GPT-2 paper: scale the residual projections by 1/sqrt(N), N = 2 additions per
                # layer
                std *= (2 * self.config.n_layer) ** -0.5
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
            # zero_init: each block starts as the identity, and the untied head predicts uniformly
            # (modded-nanogpt)
            untied_head = module is self.lm_head and not self.config.tied_head
            if self.config.zero_init and (hasattr(module, "RESIDUAL_SCALE_INIT") or untied_head):
                torch.nn.init.zeros_(module.weight)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(self, idx, kv_cache=None):
        """The final norm's output (B, T, n_embd): scorers and generate() apply logits() only where
        they need logits, the head's 50304 columns being most of the cost."""
        T = idx.size(1)
        assert T <= self.config.block_size, f"{T} tokens exceed block_size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)
        if kv_cache:  # where generation's tokens go: a tensor, no int for a compiled step to read
            pos = pos + kv_cache[0].pos
        x, cos_sin = self.transformer.wte(idx), None
        if self.config.rope:
            cos_sin = rotary(pos, self.config.n_embd // self.config.n_head)
        else:
            x = x + self.transformer.wpe(pos)
        if self.config.embed_norm:  # unit RMS into the blocks, whatever scale the embedding learns
            x = self.transformer.ln_e(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cos_sin, kv_cache[i] if kv_cache else None)
        return self.transformer.ln_f(x)

    def logits(self, hidden):
        logits = self.lm_head(hidden)
        if cap := self.config.logit_softcap:  # in float32: tanh flattens values bf16 would round
            logits = cap * torch.tanh(logits.float() / cap)
        return logits

    def forward(self, idx, targets=None, kv_cache=None):
        logits = self.logits(self.hidden_states(idx, kv_cache))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
            # training backpropagates the loss alone; logits that required grad would make a
            # compiled backward fill and add a zero gradient of their full (B, T, 50304) size: a
            # tenth of a CPU step
            logits = logits.detach()
        return logits, loss

    def num_params(self, non_embedding=False):
        """Parameters, a tied wte/lm_head counted once; non_embedding leaves out the lookup tables
        (wpe, and an untied wte), which cost no FLOPs."""
        n = sum(p.numel() for p in self.parameters())
        tables = [] if self.config.tied_head else [self.transformer.wte]
        tables += [self.transformer.wpe] if "wpe" in self.transformer else []
        return n - sum(t.weight.numel() for t in tables) if non_embedding else n

    def flops_per_token(self, T):
        """Training FLOPs per token (PaLM, appendix B): 6 per weight, 12·L·H·Q·T for attention."""
        L, H = self.config.n_layer, self.config.n_embd
        return 6 * self.num_params(non_embedding=True) + 12 * L * H * T

    @classmethod
    def from_pretrained(cls, name_or_path, check=lambda config: None):
        """GPT-2 weights from Hugging Face: a hub name (gpt2 ... gpt2-xl) or a save_pretrained
        folder (a NanoChat one too). check(config) may refuse the architecture before the weights
        load."""
        local, hub = Path(name_or_path).is_dir(), [name for name in MODEL_PRESETS if name.startswith("gpt2")]
        if not local and name_or_path not in hub:
            raise InputError(f"from_pretrained: {name_or_path!r} is neither a local folder nor one of {', '.join(hub)}")
        from transformers import AutoConfig, GPT2LMHeadModel  # slow to import: only now

        try:  # the config first, a small file: another architecture is refused before its weights
            hc = AutoConfig.from_pretrained(name_or_path)
            if hc.model_type == "nanochat":  # a --recipe modern model, as export_hf.py writes it
                return checkpoint.from_nanochat(name_or_path, hc, check, cls, GPTConfig)
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
        buffers = (".attn.bias", ".attn.masked_bias")  # old transformers' causal masks
        sd_hf = {k: v for k, v in hf.state_dict().items() if not k.endswith(buffers)}
        assert set(sd_hf) == set(sd), f"unexpected keys: {set(sd_hf) ^ set(sd)}"
        with torch.no_grad():
            for k, v in sd_hf.items():
                sd[k].copy_(v.t() if k.endswith(HF_TRANSPOSED) else v)
        return model

    @classmethod
    def from_checkpoint(cls, path, device="cpu"):
        """Our GPT from a training checkpoint: a model_*.pt file, or a log dir (its newest)."""
        path, saved = checkpoint.load_weights(path, device)
        try:  # another program's: a config GPTConfig does not know, weights of other shapes
            model = cls(GPTConfig(**saved["config"])).to(device)
            model.load_state_dict(saved["model"])
        except (TypeError, ValueError, RuntimeError) as e:
            why = first_line(e)
            raise InputError(f"{path} is not a train_gpt2.py checkpoint: its weights do not fit its config ({why})")
        return model

    def configure_optimizers(self, cfg, device_type):
        """[AdamW] (GPT-2's recipe); with --muon_lr [Muon, AdamW]: Muon for the blocks' matrices,
        AdamW for the rest, the embeddings at --embed_lr. Each group's "initial_lr" is its peak,
        which the schedule scales into its "lr"."""
        params = [p for p in self.parameters() if p.requires_grad]
        matrices = [p for p in self.transformer.h.parameters() if p.dim() == 2] if cfg.muon_lr else []
        embeddings = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]
        # --embed_weight_decay: the head and embeddings decay at a rate of their own (modern: none, as
        # in modded-nanogpt; GPT-3's 0.1 at modern's embedding lr shrinks them 0.12% a step)
        decayed_alone = cfg.embed_weight_decay is not None
        head = [self.lm_head.weight] if decayed_alone else []  # wte's too, if tied
        # under Muon or decayed alone, the embeddings (a tied one is the head's) get embed_lr
        tables = [p for p in embeddings if p is not self.lm_head.weight] if cfg.muon_lr or decayed_alone else []
        rest = [p for p in params if all(p is not q for q in matrices + tables + head)]
        embed_decay = cfg.weight_decay if cfg.embed_weight_decay is None else cfg.embed_weight_decay
        # decay the matmul weights and embeddings only: biases and LayerNorm gains stay free (GPT-3
        # paper)
        groups = [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
            {"params": tables, "weight_decay": embed_decay, "lr": cfg.embed_lr or cfg.max_lr},
            {"params": head, "weight_decay": embed_decay},
        ]
        fused = device_type in ("cuda", "cpu")  # one kernel for all parameters, not one per tensor
        groups = [group for group in groups if group["params"]]
        optimizers = [torch.optim.AdamW(groups, lr=cfg.max_lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)]
        if cfg.muon_lr:
            # Muon steps each hidden matrix along its momentum orthogonalized (Jordan et al. 2024,
            # torch's defaults: Nesterov, 5 Newton-Schulz iterations); an embedding's rows are
            # lookups, not a matrix. hardware.Muon: torch's, in float32 on a CPU without bf16
            muon = hardware.Muon(matrices, lr=cfg.muon_lr, weight_decay=cfg.muon_weight_decay)
            optimizers.insert(0, muon)
        for group in (group for optimizer in optimizers for group in optimizer.param_groups):
            group["initial_lr"] = group["lr"]
        return optimizers

    @torch.no_grad()
    def generate(
        self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, stream=None, cache=True, compile=False
    ):
        """idx (B, T) with max_new_tokens sampled tokens appended to each row; top_k=1 is greedy
        decoding. Padded vocabulary ids are never sampled. stream, if given, gets each step's new
        tokens (B, 1) as they are sampled. cache=False recomputes the whole context for every token
        (benchmarks); compile=True compiles the one-token steps (not the prompt's forward, which
        runs once): their shapes never change, so they compile once, and on a GPU
        mode="reduce-overhead" replays each as a CUDA graph, one launch for the ~200 kernels of a
        token (on a CPU the mode changes nothing)."""
        block_size = self.config.block_size

        def next_logits(idx, kv_cache):  # float32 scores of the next token: the head at the end
            return self.logits(self.hidden_states(idx, kv_cache)[:, -1, :])[:, :GPT2_VOCAB_SIZE].float()

        decode_step = next_logits
        if compile:
            decode_step = torch.compile(next_logits, mode="reduce-overhead", dynamic=False, fullgraph=True)
        pos = torch.zeros(1, dtype=torch.long, device=idx.device)
        kv_cache = [KVCache(pos, block_size, compile) for _ in self.transformer.h] if cache else None
        cached = 0  # slots filled: an int beside the tensor pos, read without waiting for the device
        for _ in range(max_new_tokens):
            if kv_cache is not None and 0 < cached < block_size:
                pos.fill_(cached)
                # a copy: the view idx[:, -1:] has a stride that grows every step, and a compiled
                # step would recompile
                logits = decode_step(idx[:, -1:].clone(memory_format=torch.contiguous_format), kv_cache)
                cached += 1
            else:
                # (re)fill the cache from the last block_size tokens: once the window slides, every
                # token's absolute position changes, so its cached keys are stale
                context = idx[:, -block_size:]
                pos.zero_()
                logits = next_logits(context, kv_cache)
                cached = context.size(1)
            logits = logits / temperature
            candidates = None
            if top_k is not None:  # the k most likely alone: softmax and sampling over k, not 50257
                logits, candidates = torch.topk(logits, min(top_k, logits.size(-1)))
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            if candidates is not None:
                idx_next = candidates.gather(-1, idx_next)
            idx = torch.cat((idx, idx_next), dim=1)
            if stream is not None:
                stream(idx_next)
        return idx


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
        raise InputError(f"shard {path} is not a .npy array (truncated, or not one); {rewrite}")
    if tokens.ndim != 1 or tokens.dtype != np.uint16:
        kind = f"a {tokens.dtype} array of shape {tokens.shape}"
        raise InputError(f"shard {path} holds {kind}, expected 1-D uint16 tokens; {rewrite}")
    # checked up front (a second or so per GB) so a bad shard stops the run before it writes
    # anything
    if len(tokens) and (largest := int(tokens.max())) >= GPT2_VOCAB_SIZE:
        raise InputError(
            f"shard {path} holds token id {largest}, but GPT-2 has {GPT2_VOCAB_SIZE} tokens: it was not written by"
            " fineweb.py"
        )
    return tokens


class DataLoaderLite:
    """Batches of (B, T) tokens from one split's shards, read end to end as an endless stream.
    Each micro-step consumes B·T·world_size tokens, rank r the r-th B·T slice (+1 for the last
    target): one rank accumulating k micro-steps sees exactly the tokens of k ranks."""

    def __init__(self, data_dir, split, B, T, rank=0, world_size=1, shuffle=False, seed=0):
        self.B, self.T, self.rank, self.world_size = B, T, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        paths = sorted(Path(data_dir).glob(f"*_{split}_*.npy"))
        if not paths:
            raise InputError(
                f"no {split} shards (*_{split}_*.npy) in {data_dir}: run fineweb.py first, or point --data_dir at its"
                " output"
            )
        self.shards = [load_shard(p) for p in paths]
        self.total_tokens = sum(len(s) for s in self.shards)
        if self.total_tokens < 2:
            n = self.total_tokens
            raise InputError(f"the {split} shards in {data_dir} hold {n} tokens: too few to train on")
        self.position = 0  # tokens of the stream consumed by all ranks together

    def read(self, position, n):
        """n tokens of the stream starting at position, crossing shard and epoch boundaries."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            epoch, offset = divmod(position + filled, self.total_tokens)
            order = np.arange(len(self.shards))
            if self.shuffle:  # the train shards in a new order every epoch, seeded
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
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
# the recipe: the training configuration (its fields are the flags, --recipe sets some defaults),
# the optimizers (GPT.configure_optimizers) and the learning-rate schedule
RECIPES = {
    # the defaults below: GPT-2, trained as build-nanogpt does (GPT-3's AdamW and schedule)
    "gpt2": {},
    # modded-nanogpt's records (Jordan et al. 2024), in switches; at GPT-2 124M's scale as in its
    # records 8-9, its track 3 (Muon's lr and decay) and nanochat's d12; the head's lr: the best of
    # a small grid (tools/bench.py --only recipes, docs/performance.md); the soft-cap Gemma 2's
    "modern": dict(rope=True, qk_norm=True, relu2=True, rmsnorm=True, bias=False, tied_head=False, zero_init=True)
    | dict(logit_softcap=15.0, embed_norm=True, split_qkv=True, head_size=128, warmup_steps=10, schedule="wsd")
    | dict(muon_lr=0.025, muon_weight_decay=0.05, muon_momentum_warmup=300, embed_lr=0.012, max_lr=0.012)
    | dict(embed_weight_decay=0.0),
}
WSD_DECAY = 0.4  # the share of the steps --schedule wsd decays over (modded-nanogpt's)


@dataclass
class TrainConfig:
    data_dir: str = flag("edu_fineweb10B", "folder of uint16 token shards written by fineweb.py")
    log_dir: str | None = flag(None, "for log.txt and checkpoints (default: log/<run_name>)")
    run_name: str | None = flag(None, "names the log dir (default of --log_dir) and the wandb run")
    model: str | None = flag(None, "preset (default: gpt2)", choices=[*MODEL_PRESETS])
    n_layer: int | None = flag(None, "number of layers (default: the preset's)")
    n_head: int | None = flag(None, "number of attention heads (default: the preset's)")
    n_embd: int | None = flag(None, "embedding width (default: the preset's)")
    head_size: int | None = flag(None, "n_head = n_embd / head_size, unless --n_head is given")
    recipe: str = flag("gpt2", "build-nanogpt's, or modern: RECIPES", choices=[*RECIPES])
    # the switches beyond GPT-2 (a run from weights: theirs)
    rope: bool | None = flag(None, "rotary positions, not learned (default: off)")
    qk_norm: bool | None = flag(None, "RMS-normalize queries and keys (default: off)")
    relu2: bool | None = flag(None, "ReLU² in the MLP instead of GELU (default: off)")
    rmsnorm: bool | None = flag(None, "RMSNorm instead of LayerNorm (default: off)")
    bias: bool | None = flag(None, "biases in the linear layers and LayerNorms (default: on)")
    tied_head: bool | None = flag(None, "lm_head tied to the token embedding (default: on)")
    zero_init: bool | None = flag(None, "zero-init projections, head (default: off)")
    logit_softcap: float | None = flag(None, "cap the logits smoothly at ± this (default: 0, off)")
    embed_norm: bool | None = flag(None, "normalize the embedding before the first block (default: off)")
    split_qkv: bool | None = flag(None, "q, k, v as three matrices, not one (default: off)")
    init_from: str | None = flag(None, "weights: gpt2 ... gpt2-xl, an HF folder, ours")
    eval_only: bool = flag(False, "score --init_from on the val split and HellaSwag, train nothing")
    batch_size: int | None = flag(None, "B per process (default: 64 or less, fitted)")
    seq_len: int = flag(1024, "T: tokens per sequence (at most the preset's block_size)")
    total_batch_size: int = flag(524288, "tokens per optimizer step (2**19, GPT-3 small's)")
    max_lr: float = flag(6e-4, "AdamW's peak learning rate (GPT-3 small's)")
    muon_lr: float | None = flag(None, "Muon's peak lr for the blocks' matrices (default: off)")
    embed_lr: float | None = flag(None, "with Muon, the embeddings' lr (default: --max_lr)")
    embed_weight_decay: float | None = flag(None, "AdamW's on the embeddings, head (default: --weight_decay)")
    muon_weight_decay: float = flag(0.0, "Muon's decoupled weight decay of the blocks' matrices")
    muon_momentum_warmup: int = flag(0, "steps over which Muon's momentum rises from 0.85 to 0.95")
    schedule: str = flag(
        "cosine", "cosine: to 10%% of the peak (GPT-3); wsd: flat, then linear to 0", choices=["cosine", "wsd"]
    )
    warmup_steps: int = flag(715, "steps of linear warmup (375M tokens, as in GPT-3)")
    max_steps: int = flag(19073, "optimizer steps (x 524288 tokens: 10B, an epoch); caps --time_budget")
    time_budget: float | None = flag(
        None, "train this long (11h, 90m, 1h30m): the steps that fit, at most --max_steps", type=budget.duration
    )
    plan: bool = flag(False, "time a few steps, print how long the run takes (or what fits), write nothing")
    gpu_price: float | None = flag(None, "one GPU's (or process's) price an hour: --plan's cost")
    weight_decay: float = flag(0.1, "AdamW weight decay on matmul weights and embeddings")
    grad_clip: float = flag(1.0, "clip the global gradient norm to this")
    eval_interval: int = flag(250, "steps between validation runs (0: only at the end)")
    val_tokens: int = flag(10485760, "tokens of the val split to evaluate, all processes together")
    hellaswag_interval: int = flag(250, "steps between HellaSwag scorings (0: never)")
    hellaswag_limit: int | None = flag(None, "the first N HellaSwag examples (default: all)")
    hellaswag_dir: str | None = flag(None, "hellaswag_val.jsonl's folder (default: hellaswag/)")
    sample_interval: int = flag(250, "steps between printed samples (0: never)")
    checkpoint_interval: int = flag(5000, "steps between checkpoints (and one at the end)")
    checkpoint_minutes: float = flag(30.0, "also save every this many minutes (0: never)")
    keep_checkpoints: int | None = flag(None, "keep the newest N (default: all)")
    resume: bool = flag(False, "continue from the newest checkpoint in --log_dir")
    compile: bool | None = flag(None, "torch.compile the model (default: on for CUDA)")
    fsdp: bool = flag(False, "under torchrun: shard the state (FSDP2), not copy it")
    dtype: str = flag(**cli.DTYPE_FLAG)
    device: str = flag(**cli.DEVICE_FLAG)
    shuffle: bool = flag(True, "visit the train shards in a new seeded order every epoch")
    seed: int = flag(1337, "seed for initialization, shard order and samples")
    wandb: bool = flag(False, "also log to Weights & Biases (pip install wandb)")
    wandb_project: str = flag("gpt2-kit", "the wandb project to log to")


def get_lr(step, cfg, max_lr=None):
    """Linear warmup, then cosine decay to 10% of max_lr (default --max_lr) at max_steps (GPT-3,
    appendix B); or (--schedule wsd) constant after warmup, then linear to 0 over WSD_DECAY."""
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


def schedule(step, cfg, group):
    """An optimizer group's settings at `step`: its lr from its own peak; Muon's momentum, from 0.85
    to 0.95 over --muon_momentum_warmup steps (modded-nanogpt's record 9: a fresh momentum averages
    over fewer stale gradients)."""
    settings = {"lr": get_lr(step, cfg, group["initial_lr"])}
    if "momentum" in group:  # torch.optim.Muon's
        warm = min(1.0, step / cfg.muon_momentum_warmup) if cfg.muon_momentum_warmup else 1.0
        settings["momentum"] = 0.85 + 0.1 * warm
    return settings


def evaluate(model, val_loader, n_seqs, batch_size, device, autocast):
    """Mean loss over the val stream's first n_seqs sequences, each rank scoring a share of them."""
    T, rank, world_size = val_loader.T, val_loader.rank, val_loader.world_size
    first, last = rank * n_seqs // world_size, (rank + 1) * n_seqs // world_size
    loss_sum = torch.zeros((), device=device)
    with torch.no_grad():
        for i in range(first, last, batch_size):
            x, y = val_loader.batch_at(i * T, min(batch_size, last - i))
            with autocast:
                _, loss = model(x.to(device), y.to(device))
            loss_sum += loss.float() * y.numel()  # summed, not averaged: uneven shares weigh right
    if world_size > 1:
        torch.distributed.all_reduce(loss_sum)
    return loss_sum.item() / (n_seqs * T)


def train(cfg, signals=None):
    ddp = "RANK" in os.environ  # torchrun starts a process per GPU, with RANK, LOCAL_RANK, WORLD_SIZE
    rank, local_rank = (int(os.environ.get(k, "0")) for k in ("RANK", "LOCAL_RANK"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = hardware.pick_device(cfg.device, local_rank)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if ddp:  # NCCL between GPUs, gloo between CPU processes
        torch.distributed.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    master = rank == 0  # this process logs, samples and writes the checkpoints
    log = print if master else lambda *args: None

    # everything that can refuse the run does so before anything is written
    ckpts = checkpoint.Checkpoints(cfg, functools.partial(check_architecture, cfg), signals, master, device, log)
    pace = budget.Pace(cfg, ckpts.resumed, get_lr, log)  # the clock; --time_budget's plan (budget.py)
    wandb = plot.import_wandb() if cfg.wandb and master else None
    hella = hellaswag.load_examples(cfg.hellaswag_dir, "val", cfg.hellaswag_limit) if cfg.hellaswag_interval else None
    B, T = hardware.micro_batch_size(cfg, ckpts.saved_args.get("batch_size"), world_size), cfg.seq_len
    train_loader = DataLoaderLite(cfg.data_dir, "train", B, T, rank, world_size, shuffle=cfg.shuffle, seed=cfg.seed)
    val_loader = DataLoaderLite(cfg.data_dir, "val", B, T, rank, world_size)
    val_seqs, bits_per_byte = val_sequences(cfg, val_loader)  # and what turns a val loss into bits per byte
    # the model in autocast's precision, B fitted to the GPU, compiled, wrapped for DDP
    dtype, why = hardware.autocast_dtype(cfg.dtype, device)
    autocast = torch.autocast(device.type, dtype, enabled=dtype != torch.float32)
    raw_model, B = build_model(cfg, ckpts.resumed, B, T, device, autocast, log)
    model = torch.compile(raw_model) if cfg.compile or (cfg.compile is None and cuda) else raw_model
    if model is not raw_model and not hardware.compiles(model, B, T, device, autocast, log):
        model = raw_model  # no compiler here: eager, with the same losses
    compiled = model is not raw_model
    if ddp and not cfg.fsdp:
        model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    cfg.batch_size = train_loader.B = B  # a resume reads it; main's out-of-memory line names it
    grad_accum_steps = cfg.total_batch_size // (B * T * world_size)
    optimizers = raw_model.configure_optimizers(cfg, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # Micikevicius et al. 2018
    state = checkpoint.TrainingState(raw_model, optimizers, scaler, train_loader, pace)
    pace.start(model, state, autocast, val_seqs)  # --time_budget: timed, planned (or refused)
    start_step, val_loss = ckpts.start(state)  # a resume's state put back; the log dir locked
    run_log = state.run_log = plot.RunLog(Path(cfg.log_dir) if master else None, ckpts.resumed, cfg, pace, wandb)
    plot.describe_run(log, cfg, ckpts.path, raw_model, (device, dtype, why, compiled), train_loader, val_loader)

    for step in itertools.count(start_step):  # to cfg.max_steps (which --time_budget plans)
        due = periodic_work(step, cfg, ckpts.evaluated_step)
        with hardware.whole_weights(raw_model, cfg.fsdp and bool(due - {"checkpoint"}), GPT) as whole:
            if "val" in due:
                val_loss = evaluate(whole if cfg.fsdp else model, val_loader, val_seqs, B, device, autocast)
                run_log.event(step, val=val_loss, val_bpb=val_loss * bits_per_byte)
            if "hella" in due:  # B // 4 examples of 4 rows per forward: a micro-batch's memory
                n, _, n_norm = hellaswag.evaluate(whole, hella, T, device, autocast, B // 4 or 1, rank, world_size)
                run_log.event(step, hella=n_norm / n)
            if master and "sample" in due:
                print_samples(whole, device, autocast, cfg.seed + step, log)
        if "checkpoint" in due:
            ckpts.save(step, val_loss)
        if step >= cfg.max_steps:
            break

        # one optimizer step, timed on its own
        t0 = time.perf_counter()
        raw_model.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device)
        for micro_step in range(grad_accum_steps):
            x, y = train_loader.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if ddp and not cfg.fsdp:  # only the last micro-step's backward all-reduces gradients
                model.require_backward_grad_sync = micro_step == grad_accum_steps - 1
            if cfg.fsdp:  # FSDP2's switch for the same: only the last one reduce-scatters them
                raw_model.set_requires_gradient_sync(micro_step == grad_accum_steps - 1)
            with autocast:
                _, loss = model(x, y)
            loss = loss / grad_accum_steps  # the gradient of the whole batch's mean, not its sum
            loss_accum += loss.detach()
            scaler.scale(loss).backward()
        if ddp:
            torch.distributed.all_reduce(loss_accum)  # gloo has no AVG: sum, then divide
            loss_accum /= world_size
        for optimizer in optimizers:
            scaler.unscale_(optimizer)  # float16 scales the loss up (so small gradients survive): clip the true ones
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        lr, scale = get_lr(step, cfg), scaler.get_scale()
        for optimizer in optimizers:
            for group in optimizer.param_groups:  # the schedule scales each group's own peak
                group.update(schedule(step, cfg, group))
            scaler.step(optimizer)  # no update if float16 gradients overflowed: the scale falls
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        loss_value, norm_value, tok_per_sec = loss_accum.item(), norm.item(), cfg.total_batch_size / dt
        if not math.isfinite(loss_value):
            raise diverged(step, loss_value, cfg)
        pace.step_done(step, due, t0, dt)  # timed; with --time_budget it sets cfg.max_steps: what fits
        mfu = pace.mfu(tok_per_sec)
        clock = run_log.step(step, loss_value, lr, norm_value, tok_per_sec, mfu)  # log.txt, wandb
        line = f"step {step} | loss {loss_value:.6f} | lr {lr:.4e} | norm {norm_value:.4f} | dt {dt * 1000:.2f}ms"
        speed = f"tok/sec {tok_per_sec:.0f} | mfu {f'{100 * mfu:.2f}%' if mfu else 'n/a'}"
        log(f"{line} | {speed} | {clock}{float16_note(scaler, scale)}")
        ckpts.step_done(step + 1, val_loss)  # on a signal or every --checkpoint_minutes: saves
    run_log.finish(step, val_loss)  # and the run's last line: how far it got, in what time


# -----------------------------------------------------------------------------
# the steps train() names, in its order
def val_sequences(cfg, val_loader):
    """(n, bits_per_byte): the sequences evaluation scores, --val_tokens' worth or all that the val split holds; and
    the factor from their mean loss (nats per token) to bits per UTF-8 byte of the text their targets decode to,
    which compares across tokenizers (<|endoftext|> is no text: 0 bytes, as nanochat counts it)."""
    n_tokens, T = val_loader.total_tokens, cfg.seq_len
    if n_tokens - 1 < T:
        raise InputError(f"the val split holds {n_tokens} tokens, fewer than one sequence of --seq_len {T} + 1")
    n = min(cfg.val_tokens, n_tokens - 1) // T
    enc = gpt2_tokenizer()
    token_bytes = torch.tensor([len(enc.decode_single_token_bytes(i)) for i in range(GPT2_VOCAB_SIZE)])
    token_bytes[enc.eot_token] = 0
    n_bytes = sum(token_bytes[val_loader.batch_at(i * T, min(256, n - i))[1]].sum().item() for i in range(0, n, 256))
    return n, n * T / n_bytes / math.log(2)


def initial_model(cfg, resumed, log):
    """A resumed run's architecture (its weights come later), else --init_from's weights (OpenAI's
    keep their 50257 rows: no padding to change their loss), else a fresh init of --model's."""
    if resumed is not None:
        if cfg.init_from:
            log(f"resuming: --init_from {cfg.init_from} is not used, the checkpoint holds the weights")
        return GPT(GPTConfig(**resumed["config"]))
    if cfg.init_from is None:
        return GPT(make_model_config(cfg))
    source = Path(cfg.init_from)
    # one of our checkpoints, or a log dir of them; else a hub name or a save_pretrained folder
    ours = source.is_file() or (source.is_dir() and checkpoint.checkpoint_paths(source))

    def check(config):
        check_architecture(cfg, dataclasses.asdict(config), f"--init_from {cfg.init_from}")

    model = GPT.from_checkpoint(source) if ours else GPT.from_pretrained(cfg.init_from, check)
    check(model.config)
    return model


def build_model(cfg, resumed, B, T, device, autocast, log):
    """(raw_model, B): the model a run starts from on its device, sharded by FSDP or not; B fitted
    to a GPU's memory unless given or resumed."""
    torch.manual_seed(cfg.seed)
    raw_model = initial_model(cfg, resumed, log).to(device)
    if cfg.fsdp:
        hardware.shard(raw_model)
    if cfg.batch_size is None and resumed is None and device.type == "cuda":
        B = hardware.fit_to_memory(raw_model, B, T, device, autocast, cfg.fsdp)
        log(f"--batch_size {B}: the largest of 64, 32, 16 ... whose step fits this GPU (1: none does)")
    return raw_model, B


def periodic_work(step, cfg, evaluated_step):
    """The jobs due before optimizer step `step`, each every its interval (0: never); after the last
    step evaluations and a checkpoint, no sample; at step 0 no checkpoint or sample; nothing at
    `evaluated_step`, the step a resume starts from whose work ran before it stopped."""
    if step == evaluated_step:
        return set()
    intervals = dict(val=cfg.eval_interval, hella=cfg.hellaswag_interval, sample=cfg.sample_interval)
    if cfg.plan:  # each job once, one a step, to be timed (the checkpoint only serialized)
        jobs = [job for job, n in {**intervals, "val": 1, "checkpoint": 1}.items() if n]
        return set(jobs[step : step + 1])
    due = {job for job, n in {**intervals, "checkpoint": cfg.checkpoint_interval}.items() if n and step % n == 0}
    if step == cfg.max_steps:
        due = (due - {"sample"}) | {"val", "checkpoint"} | ({"hella"} if cfg.hellaswag_interval else set())
    return due - {"checkpoint", "sample"} if step == 0 else due


def print_samples(model, device, autocast, seed, log):
    """Four continuations of GPT-2's demo prompt, from their own generator: resumes stay exact."""
    enc = gpt2_tokenizer()
    prompt = torch.tensor([enc.encode("Hello, I'm a language model,")] * 4, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with autocast:
        rows = model.generate(prompt, 32, top_k=50, generator=generator)
    for i, row in enumerate(rows.tolist()):
        log(f"sample {i}: {enc.decode(row)!r}")


def diverged(step, loss, cfg):
    return InputError(
        f"step {step}: the loss is {loss}; training diverged (try a lower --max_lr), the checkpoints in"
        f" {cfg.log_dir} are untouched"
    )


def float16_note(scaler, scale):
    """The step line's end under float16: the loss scale, and whether this step was skipped."""
    if not scaler.is_enabled():
        return ""
    skipped = " | skipped: float16 gradients overflowed, scale lowered" if scaler.get_scale() < scale else ""
    return f" | scale {scale:.0f}{skipped}"


# -----------------------------------------------------------------------------
# the command line: the flags (TrainConfig's fields), their checks, the one-line errors
POSITIVE_FLAGS = ["batch_size", "seq_len", "total_batch_size", "max_steps", "val_tokens", "hellaswag_limit"]
POSITIVE_FLAGS += ["keep_checkpoints", "n_layer", "n_head", "n_embd", "head_size"]
NON_NEGATIVE_FLAGS = ["warmup_steps", "eval_interval", "hellaswag_interval", "sample_interval"]
NON_NEGATIVE_FLAGS += ["checkpoint_interval", "checkpoint_minutes", "logit_softcap", "gpu_price"]
NON_NEGATIVE_FLAGS += ["embed_weight_decay", "muon_weight_decay", "muon_momentum_warmup"]
# GPTConfig's fields that are flags too: --n_layer, --n_head, --n_embd and the switches
ARCHITECTURE_FLAGS = [f.name for f in dataclasses.fields(GPTConfig) if f.name in TrainConfig.__dataclass_fields__]
SWITCHES = [k for k in ARCHITECTURE_FLAGS if k not in MODEL_PRESETS["gpt2"]]  # beyond GPT-2


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.strip().splitlines()[0])
    cli.add_flags(parser, TrainConfig)
    recipe = cli.ArgumentParser(add_help=False)  # read first: --help shows the recipe's defaults
    recipe.add_argument("--recipe", default="gpt2", choices=[*RECIPES])
    parser.set_defaults(**RECIPES[recipe.parse_known_args(argv)[0].recipe])  # a flag given wins
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    cli.check_at_least(parser, cfg, 1, POSITIVE_FLAGS)
    cli.check_at_least(parser, cfg, 0, NON_NEGATIVE_FLAGS)
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
    if cfg.eval_only and (cfg.resume or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        parser.error("--eval_only scores --init_from in one process: without --resume, and not under torchrun")
    if cfg.plan and (cfg.resume or cfg.eval_only):
        parser.error("--plan times a new run: leave out --resume and --eval_only")
    if cfg.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        parser.error("--fsdp shards the model across processes: launch with torchrun --nproc_per_node=N (N > 1)")
    if cfg.log_dir is None:
        cfg.log_dir = str(Path("log", cfg.run_name or ""))
    if cfg.init_from is None:  # else the weights' architecture, checked once they are loaded
        check_model_config(parser, make_model_config(cfg), cfg)
    return cfg


def check_model_config(parser, model_config, args):
    if model_config.n_embd % model_config.n_head:
        parser.error(f"{model_config.n_head} heads do not divide --n_embd {model_config.n_embd} (--n_head/--head_size)")
    if args.seq_len > model_config.block_size:
        parser.error(
            f"--seq_len {args.seq_len} exceeds the {args.model or 'gpt2'} block_size of {model_config.block_size}"
        )


def asked_architecture(cfg, default=None):
    """The architecture the flags ask for: --model's preset (or default's), the flags over it."""
    overrides = {k: getattr(cfg, k, None) for k in ARCHITECTURE_FLAGS if getattr(cfg, k, None) is not None}
    asked = {**MODEL_PRESETS.get(cfg.model or default, {}), **overrides}
    if cfg.head_size and cfg.n_head is None and "n_embd" in asked:  # the nearest whole number
        asked["n_head"] = max(1, round(asked["n_embd"] / cfg.head_size))
    return asked


def make_model_config(cfg):
    return GPTConfig(**asked_architecture(cfg, default="gpt2"), vocab_size=PADDED_VOCAB_SIZE)


def check_architecture(cfg, config, source):
    """The architecture flags given (--model, --n_layer, ...) must match the weights'."""
    if not isinstance(config, dict) or set(config) - {f.name for f in dataclasses.fields(GPTConfig)}:
        raise InputError(f"{source} holds no GPTConfig ({config!r}): it was not written by train_gpt2.py")
    if (vocab := config.get("vocab_size", GPT2_VOCAB_SIZE)) < GPT2_VOCAB_SIZE:  # the data's ids would index past it
        raise InputError(
            f"{source} has a vocabulary of {vocab}, fewer than GPT-2's {GPT2_VOCAB_SIZE} tokens in the shards"
        )
    saved = {**dataclasses.asdict(GPTConfig()), **config}  # a switch added since: off
    if differ := {k: v for k, v in asked_architecture(cfg).items() if saved[k] != v}:
        fix = "leave out the architecture flags (--recipe modern sets some), or match them"
        if config.get("rope") and "embed_norm" not in config:  # --recipe modern before 2026-12-06
            old = f"--no-embed_norm --no-split_qkv --n_head {saved['n_head']}"
            fix = f"it is an older --recipe modern: sample from it, or fine-tune it (--init_from, {old})"
        raise InputError(f"{source} was trained with {config}, but the flags ask for {differ}: {fix}")
    if cfg.seq_len > (block_size := config.get("block_size", cfg.seq_len)):
        raise InputError(
            f"--seq_len {cfg.seq_len} exceeds the block_size {block_size} of {source}: pass --seq_len {block_size}"
            " or less"
        )


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


def evaluate_only(cfg):
    """--eval_only: the weights of --init_from scored as a run scores itself, in one process: the val loss and bits per
    byte on --data_dir's val split (--val_tokens, --seq_len), HellaSwag unless --hellaswag_interval 0. Printed, and
    written to <log_dir>/reference.json, the line plot.py draws for that split. Nothing is trained or checkpointed."""
    if cfg.init_from is None:
        raise InputError(
            "--eval_only scores --init_from's weights: name gpt2 ... gpt2-xl, an HF folder or a checkpoint"
        )
    device = hardware.pick_device(cfg.device)
    dtype, _ = hardware.autocast_dtype(cfg.dtype, device)
    autocast = torch.autocast(device.type, dtype, enabled=dtype != torch.float32)
    path = Path(cfg.log_dir) / "reference.json"
    cannot = f"--log_dir {cfg.log_dir}: cannot write {path.name} there"
    try:  # the folder first: one it cannot write is found before the weights load
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{cannot} ({e.strerror})")
    B, T = cfg.batch_size or 8, cfg.seq_len
    val_loader = DataLoaderLite(cfg.data_dir, "val", B, T)  # before the weights: bad data need not wait for gpt2-xl
    n_seqs, bits_per_byte = val_sequences(cfg, val_loader)
    hella = hellaswag.load_examples(cfg.hellaswag_dir, "val", cfg.hellaswag_limit) if cfg.hellaswag_interval else []
    model = initial_model(cfg, None, print).to(device).eval()
    val_loss = evaluate(model, val_loader, n_seqs, B, device, autocast)
    split = dict(data_dir=str(Path(cfg.data_dir).resolve()), val_tokens=n_seqs * T, seq_len=T)
    scores = dict(model=cfg.init_from, **split, val_loss=val_loss, val_bpb=val_loss * bits_per_byte, hellaswag=None)
    if hella:
        n, _, n_norm = hellaswag.evaluate(model, hella, T, device, autocast, B // 4 or 1, progress=True)
        scores |= dict(hellaswag=n_norm / n, hellaswag_examples=n)
    hella_text = f"{scores['hellaswag']:.4f} ({len(hella):,} examples)" if hella else "not scored"
    print(f"{cfg.init_from} on the val split of {cfg.data_dir}, {n_seqs * T:,} tokens of --seq_len {T}:")
    print("| val loss | val bits per byte | HellaSwag acc_norm |\n| --- | --- | --- |")
    print(f"| {val_loss:.4f} | {scores['val_bpb']:.4f} | {hella_text} |")
    try:
        path.with_suffix(".tmp").write_text(json.dumps(scores, indent=1) + "\n")
        path.with_suffix(".tmp").replace(path)  # whole or not at all: plot.py may read it while a run draws
    except OSError as e:
        raise InputError(f"{cannot} ({e.strerror})")
    print(f"wrote {path}: plot.py draws it as the line to reach on this split")


def main(argv=None):
    cfg = parse_args(argv)
    try:
        if cfg.eval_only:
            evaluate_only(cfg)
        else:
            train(cfg, checkpoint.StopSignals())
    except budget.PlanReady as planned:
        if int(os.environ.get("RANK", "0")) == 0:
            print(planned.pace.report(MODEL_PRESETS))
    except checkpoint.Interrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(e)
        raise SystemExit(128 + e.signum)
    except InputError as e:
        raise SystemExit(str(e))
    except RuntimeError as e:  # out of memory: a CUDA OutOfMemoryError, or a CPU allocator's error
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in str(e):
            raise
        raise SystemExit(out_of_memory(cfg))
    finally:  # after an error too: a process group left behind makes NCCL warn on every rank
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if "RANK" in os.environ:
        # a torchrun rank whose work is done and saved leaves now, before the interpreter's and C++'s teardown, where
        # gloo has aborted a CPU rank after a complete run ("terminate called without an active exception", torch
        # 2.13, twice in five test-suite runs on 2 cores; the cause is not found)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
