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

from cli import ArgumentParser, InputError, check_at_least
from train_gpt2 import DEVICE_FLAG, DTYPE_FLAG, EOT_TOKEN, GPT, GPT2_VOCAB_SIZE, gpt2_tokenizer, make_autocast, pick_device


class KVCache:
    """One layer's keys and values for the positions seen so far, so generation feeds one token per step."""

    def __init__(self, block_size):
        self.block_size = block_size
        self.k = self.v = None  # allocated on first use, in the dtype autocast gives the keys
        self.length = 0

    def update(self, k, v):
        B, nh, T, hs = k.shape
        # the attention's causal masking assumes new queries come either alone or into an empty cache
        assert T == 1 or self.length == 0, "append one token at a time to a filled cache"
        if self.k is None:
            self.k = k.new_empty(B, nh, self.block_size, hs)
            self.v = v.new_empty(B, nh, self.block_size, hs)
        self.k[:, :, self.length : self.length + T] = k
        self.v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, use_kv_cache=True, stream=None):
    """Append max_new_tokens sampled tokens to each row of idx (B, T); top_k=1 is greedy decoding. Padded
    vocabulary ids are never sampled. stream, if given, is called with each step's new tokens (B, 1) as soon
    as they are sampled. use_kv_cache=False recomputes the whole context for every token (for benchmarks)."""
    block_size = model.config.block_size
    kv_cache = None
    for _ in range(max_new_tokens):
        if kv_cache is not None and kv_cache[0].length < block_size:
            hidden = model.hidden_states(idx[:, -1:], kv_cache=kv_cache)
        else:
            # (re)fill the cache from the last block_size tokens: once the window slides, every
            # token's absolute position changes, so its cached keys are stale
            kv_cache = [KVCache(block_size) for _ in model.transformer.h] if use_kv_cache else None
            hidden = model.hidden_states(idx[:, -block_size:], kv_cache=kv_cache)
        # the LM head at the last position only: the others' logits would be thrown away
        logits = model.lm_head(hidden[:, -1, :])[:, :GPT2_VOCAB_SIZE].float() / temperature
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
    weights.add_argument("--checkpoint", default="log", help="a train_gpt2.py checkpoint (model_*.pt), or a log dir: its newest checkpoint")
    weights.add_argument("--init_from", help="Hugging Face GPT-2 weights instead: gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a save_pretrained folder")
    parser.add_argument("--prompt", default="Hello, I'm a language model,", help="text to continue; empty starts a new document (<|endoftext|>)")
    parser.add_argument("--num_samples", type=int, default=1, help="samples to draw from the prompt (a single one streams)")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="tokens generated per sample")
    parser.add_argument("--temperature", type=float, default=1.0, help="divides the logits: below 1 sharpens the distribution, above 1 flattens it")
    parser.add_argument("--top_k", type=int, default=50, help="sample among the k most likely tokens only (1: greedy, 50257: all)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator")
    parser.add_argument("--device", **DEVICE_FLAG)
    parser.add_argument("--dtype", **DTYPE_FLAG)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the decoding (pays off only for long samples)")
    args = parser.parse_args(argv)
    check_at_least(parser, args, 1, ["num_samples", "max_new_tokens", "top_k"])
    if not args.temperature > 0:  # written this way round so nan is refused too
        parser.error(f"--temperature must be positive, got {args.temperature} (for greedy decoding use --top_k 1)")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
        enc = gpt2_tokenizer()  # before the weights: a missing tokenizer should not wait for gpt2-xl to load
        model = GPT.from_pretrained(args.init_from) if args.init_from else GPT.from_checkpoint(args.checkpoint, device)
    except InputError as e:
        raise SystemExit(str(e))
    model.to(device).eval()
    if args.compile:
        # decoding runs hidden_states (and lm_head at one position), not forward; dynamic shapes, because the
        # cache grows by a position every token: one graph for the prompt, one for the tokens after it
        model.hidden_states = torch.compile(model.hidden_states, dynamic=True)
    autocast, _, _ = make_autocast(args.dtype, device)

    tokens, block_size = enc.encode(args.prompt, allowed_special={"<|endoftext|>"}), model.config.block_size
    if len(tokens) > block_size:
        print(f"the prompt is {len(tokens)} tokens, more than the model's context: keeping its last {block_size}", file=sys.stderr)
        tokens = tokens[-block_size:]
    prompt = enc.decode(tokens)  # the text the model sees; with an empty prompt it sees <|endoftext|> alone
    idx = torch.tensor([tokens or [EOT_TOKEN]] * args.num_samples, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    def run(stream=None):
        with autocast:
            return generate(model, idx, args.max_new_tokens, args.temperature, args.top_k, generator, stream=stream)

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
