"""
Sample text from a GPT: a train_gpt2.py checkpoint, or OpenAI's GPT-2 weights from Hugging Face.

    python sample.py                                          # newest checkpoint in log/
    python sample.py --checkpoint log/model_19073.pt --prompt "The meaning of life is"
    python sample.py --init_from gpt2 --num_samples 4 --max_new_tokens 64
    python sample.py --init_from gpt2-xl --top_k 1            # greedy decoding

One sample streams to the terminal as it is generated; several are generated as one batch and
printed one after another. The same --seed gives the same text on the same device and dtype.
The decoding loop (with its KV cache) is the model's own: GPT.generate in train_gpt2.py.
"""

import argparse
import codecs
import sys

import torch

from cli import DEVICE_FLAG, DTYPE_FLAG, ArgumentParser, InputError, check_at_least
from hardware import autocast_dtype, pick_device
from tokenizer import EOT_TOKEN, gpt2_tokenizer
from train_gpt2 import GPT


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
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
        enc = gpt2_tokenizer()  # before the weights: a missing tokenizer should not wait for gpt2-xl to load
        model = GPT.from_pretrained(args.init_from) if args.init_from else GPT.from_checkpoint(args.checkpoint, device)
        dtype, _ = autocast_dtype(args.dtype, device)
    except InputError as e:
        raise SystemExit(str(e))
    model.to(device).eval()
    autocast = torch.autocast(device.type, dtype, enabled=dtype != torch.float32)

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
            return model.generate(
                idx, args.max_new_tokens, args.temperature, args.top_k, generator, stream=stream, compile=args.compile
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
