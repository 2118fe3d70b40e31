"""
The command line every script shares: one way to fail (InputError, one line), argparse that reports a bad flag in
one line and shows each flag's default in --help, and flags generated from a config dataclass.

No torch here: fineweb.py's tokenizer processes import it too, and must stay light.
"""

import argparse
import dataclasses
import math
import re
import typing


class InputError(Exception):
    """Something the user can fix (a flag, a file, the data, a diverging run): the message says what is wrong and what
    to do. Library code raises it, so a notebook survives it; each script's main() prints it as one line, exit status 1.
    An Exception, not SystemExit: fineweb.py reads documents in a Pool's feeder thread, which passes on only Exceptions."""


def first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help keeps the usage examples as written and shows each flag's default, unless its help explains it."""

    def _get_help_string(self, action):
        if not action.option_strings or action.default is argparse.SUPPRESS or "(default" in action.help:
            return action.help
        return action.help + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block: it would bury the message) and exits with status 2."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag(default, help, **kwargs):
    """A config dataclass field that is also a command-line flag."""
    return dataclasses.field(default=default, metadata=dict(help=help, **kwargs))


def add_flags(parser, config_class, names=None):
    """A --flag for each field of a config dataclass (or each of `names`), typed by its annotation; --no-flag for booleans."""
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if names is None or f.name in names:
            kind = next(
                (t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name]
            )  # int | None -> int
            kwargs = dict(f.metadata)
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs.setdefault("type", finite if kind is float else kind)
            parser.add_argument(f"--{f.name}", default=f.default, **kwargs)


def finite(value):
    """argparse type of float flags: nan and inf are no learning rate, clip or interval."""
    number = float(value)
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
    return number


def check_at_least(parser, args, minimum, names):
    for name in names:
        if (value := getattr(args, name)) is not None and value < minimum:
            parser.error(f"--{name} must be {'at least 1' if minimum else '0 or more'}, got {value}")


def device_name(value):
    """argparse type of every script's --device flag."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return value


# every script's --device and --dtype (hardware.py turns them into a device and an autocast)
DEVICE_FLAG = dict(
    default="auto", type=device_name, help="auto picks cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps"
)
DTYPE_FLAG = dict(
    default="auto",
    choices=["auto", "float32", "bfloat16", "float16"],
    help="autocast precision. auto = bfloat16 where the hardware has it natively (CUDA compute capability 8.0+, "
    "CPUs with AVX-512 bf16 or AMX), float16 with a gradient scaler on CUDA 7.x (V100, T4, RTX 20xx), "
    "else float32 (older GPUs, Apple MPS, other CPUs)",
)
