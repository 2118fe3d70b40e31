"""
Sample text from a GPT: a train_gpt2.py checkpoint, or OpenAI's GPT-2 weights from Hugging Face.

    python sample.py                                          # newest checkpoint in log/
    python sample.py --checkpoint log/model_19073.pt --prompt "The meaning of life is"
    python sample.py --init_from gpt2 --num_samples 4 --max_new_tokens 64
    python sample.py --init_from gpt2-xl --top_k 1            # greedy decoding

One sample streams to the terminal as it is generated; several are generated as one batch and
printed one after another. The same --seed gives the same text on the same device and dtype.
generate() is the decoding loop (with its KV cache) that training's samples and bench.py use too.
"""

import argparse
import codecs
import sys

import torch
from torch.nn import functional as F

from cli import DEVICE_FLAG, DTYPE_FLAG, ArgumentParser, InputError, check_at_least
from hardware import make_autocast, pick_device
from tokenizer import EOT_TOKEN, GPT2_VOCAB_SIZE, gpt2_tokenizer


class KVCache:
    """One layer's keys and values for generation, in buffers as long as the context. The tokens fed go to the slots
    from `pos` on, a tensor all layers share and generate() sets: every one-token step then has the same shapes and
    reads no changing Python number, so torch.compile captures it once (a CUDA graph with mode="reduce-overhead").
    Attention covers all the slots, a mask hiding those after each query's position."""

    def __init__(self, pos, block_size, static_address=False):
        self.pos, self.block_size = pos, block_size  # pos: (1,) long, the first position the next tokens take
        self.static_address = static_address  # for a compiled step; marking imports torch._dynamo, 2 s on a CPU
        self.k = self.v = None  # allocated on first use, in the dtype autocast gives the keys

    def positions(self, T):
        return self.pos + torch.arange(T, device=self.pos.device)

    def update(self, k, v):
        B, nh, T, hs = k.shape
        if self.k is None:
            # zeros, not empty: a hidden slot still enters the matmuls, and its weight 0 times a nan would be nan
            self.k, self.v = (k.new_zeros(B, nh, self.block_size, hs) for _ in range(2))
            if self.static_address:  # CUDA graphs skip a step that writes into an input not marked static
                for buffer in (self.k, self.v):
                    torch._dynamo.mark_static_address(buffer)
        pos = self.positions(T)
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        mask = (
            torch.arange(self.k.size(2), device=pos.device) <= pos[:, None]
        )  # (T, block_size): the slots each query sees
        return self.k, self.v, mask


def next_logits(model, idx, kv_cache=None):
    """The scores (B, GPT2_VOCAB_SIZE), float32, of the token after each row of idx (B, T): the LM head at the last
    position only, the others' logits would be thrown away."""
    hidden = model.hidden_states(idx, kv_cache=kv_cache)
    return model.logits(hidden[:, -1, :])[:, :GPT2_VOCAB_SIZE].float()


@torch.no_grad()
def generate(
    model,
    idx,
    max_new_tokens,
    temperature=1.0,
    top_k=None,
    generator=None,
    use_kv_cache=True,
    stream=None,
    compile=False,
):
    """Append max_new_tokens sampled tokens to each row of idx (B, T); top_k=1 is greedy decoding. Padded
    vocabulary ids are never sampled. stream, if given, is called with each step's new tokens (B, 1) as soon
    as they are sampled. use_kv_cache=False recomputes the whole context for every token (for benchmarks).
    compile=True compiles the one-token steps (not the prompt's forward, which runs once): their shapes never change,
    so they compile once, and on a GPU mode="reduce-overhead" replays them as a CUDA graph, one launch for the ~200
    kernels of a token (on a CPU the mode changes nothing)."""
    block_size = model.config.block_size
    decode_step = (
        torch.compile(next_logits, mode="reduce-overhead", dynamic=False, fullgraph=True) if compile else next_logits
    )
    pos = torch.zeros(1, dtype=torch.long, device=idx.device)
    kv_cache = [KVCache(pos, block_size, static_address=compile) for _ in model.transformer.h] if use_kv_cache else None
    cached = 0  # slots filled; a Python int beside the tensor pos, so deciding to refill never waits for the device
    for _ in range(max_new_tokens):
        if kv_cache is not None and 0 < cached < block_size:
            pos.fill_(cached)
            # a copy: the view idx[:, -1:] has a stride that grows every step, and a compiled step would recompile
            logits = decode_step(model, idx[:, -1:].clone(memory_format=torch.contiguous_format), kv_cache)
            cached += 1
        else:
            # (re)fill the cache from the last block_size tokens: once the window slides, every
            # token's absolute position changes, so its cached keys are stale
            context = idx[:, -block_size:]
            pos.zero_()
            logits = next_logits(model, context, kv_cache)
            cached = context.size(1)
        logits = logits / temperature
        candidates = None
        if top_k is not None:  # sample among the k most likely alone: softmax and sampling over k, not 50257
            logits, candidates = torch.topk(logits, min(top_k, logits.size(-1)))
        idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)
        if candidates is not None:
            idx_next = candidates.gather(-1, idx_next)
        idx = torch.cat((idx, idx_next), dim=1)
        if stream is not None:
            stream(idx_next)
    return idx


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.strip().splitlines()[0])
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint",
        default="log",
        help="a train_gpt2.py checkpoint (model_*.pt), or a log dir: its newest checkpoint",
    )
    weights.add_argument(
        "--init_from",
        help="Hugging Face GPT-2 weights instead: gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a save_pretrained folder",
    )
    parser.add_argument(
        "--prompt",
        default="Hello, I'm a language model,",
        help="text to continue; empty starts a new document (<|endoftext|>)",
    )
    parser.add_argument(
        "--num_samples", type=int, default=1, help="samples to draw from the prompt (a single one streams)"
    )
    parser.add_argument("--max_new_tokens", type=int, default=256, help="tokens generated per sample")
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="divides the logits: below 1 sharpens the distribution, above 1 flattens it",
    )
    parser.add_argument(
        "--top_k", type=int, default=50, help="sample among the k most likely tokens only (1: greedy, 50257: all)"
    )
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator")
    parser.add_argument("--device", **DEVICE_FLAG)
    parser.add_argument("--dtype", **DTYPE_FLAG)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile the one-token decoding step, a CUDA graph on a GPU (pays off only for long samples)",
    )
    args = parser.parse_args(argv)
    check_at_least(parser, args, 1, ["num_samples", "max_new_tokens", "top_k"])
    if not args.temperature > 0:  # written this way round so nan is refused too
        parser.error(f"--temperature must be positive, got {args.temperature} (for greedy decoding use --top_k 1)")
    return args


def main(argv=None):
    from train_gpt2 import GPT  # the script that trains imports this one: here, not at the top, imports run one way

    args = parse_args(argv)
    try:
        device = pick_device(args.device)
        enc = gpt2_tokenizer()  # before the weights: a missing tokenizer should not wait for gpt2-xl to load
        model = GPT.from_pretrained(args.init_from) if args.init_from else GPT.from_checkpoint(args.checkpoint, device)
        autocast, _, _ = make_autocast(args.dtype, device)
    except InputError as e:
        raise SystemExit(str(e))
    model.to(device).eval()

    tokens, block_size = enc.encode(args.prompt, allowed_special={"<|endoftext|>"}), model.config.block_size
    if len(tokens) > block_size:
        print(
            f"the prompt is {len(tokens)} tokens, more than the model's context: keeping its last {block_size}",
            file=sys.stderr,
        )
        tokens = tokens[-block_size:]
    prompt = enc.decode(tokens)  # the text the model sees; with an empty prompt it sees <|endoftext|> alone
    idx = torch.tensor([tokens or [EOT_TOKEN]] * args.num_samples, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    def run(stream=None):
        with autocast:
            return generate(
                model,
                idx,
                args.max_new_tokens,
                args.temperature,
                args.top_k,
                generator,
                stream=stream,
                compile=args.compile,
            )

    if args.num_samples == 1:
        # a character can span tokens: the incremental decoder holds back its bytes until it is complete
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        print(prompt, end="", flush=True)
        run(stream=lambda new: print(utf8.decode(enc.decode_single_token_bytes(new.item())), end="", flush=True))
        print(utf8.decode(b"", final=True))
    else:
        for i, row in enumerate(run().tolist()):
            print(f"--- sample {i + 1} of {args.num_samples} ---")
            print(prompt + enc.decode(row[idx.size(1) :]))


if __name__ == "__main__":
    main()
