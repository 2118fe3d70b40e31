"""
Tokenize a text corpus into the GPT-2 token shards that train_gpt2.py's DataLoaderLite reads.

    python fineweb.py                  # FineWeb-Edu sample-10BT -> edu_fineweb10B/, ~100 shards of 1e8 tokens
    python fineweb.py --streaming      # the same, tokenizing while it downloads (no full local copy first)
    python fineweb.py --dataset tinyshakespeare --shard_size 32768     # ~338k tokens -> tinyshakespeare/, offline
    python fineweb.py --input 'corpus/*.parquet' extra.jsonl --out mydata   # local files, in the order given

Every document becomes [EOT] + encode_ordinary(text) (tiktoken gpt2, EOT = 50256), and the documents are
concatenated in order into <out>/<prefix>_<split>_<index:06d>.npy: 1-D uint16 arrays of exactly
--shard_size tokens (the last one may be shorter); shard 0 is the val split, the rest are train.
A .txt file is one document; .jsonl lines and .parquet rows are one document each (field --text_column).
Tiny Shakespeare ships with the repository, as tinyshakespeare/input.txt beside this script (a copy of the
script without it downloads it there once); tiktoken's GPT-2 BPE files download once into its cache
(offline: TIKTOKEN_CACHE_DIR). Interrupted? Run the same command again: <out>/manifest.json records where
each finished shard ends in the input, so the run continues from there and ends with the same files as an
uninterrupted one.
"""

import argparse
import glob
import http.client
import json
import multiprocessing as mp
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from cli import ArgumentParser, InputError
from tokenizer import EOT_TOKEN, gpt2_tokenizer

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE = Path(__file__).resolve().parent / "tinyshakespeare" / "input.txt"  # the repository's copy
MANIFEST = "manifest.json"
DOWNLOAD_TIMEOUT = 10  # seconds to wait for the server: offline, fail fast instead of hanging

# No torch here, and so nothing from train_gpt2.py, which imports it: every tokenizer process would load it for
# nothing (spawned ones import this file anew). It shares cli.py (the one-line errors, InputError) with the others.


# -----------------------------------------------------------------------------
# reading: each reader yields the documents of one file after its first `skip` (those already in
# finished shards, so a restart neither tokenizes nor parses them) and returns how many it skipped


def read_txt(path, column, skip):
    if skip:
        return 1
    yield path.read_bytes().decode("utf-8")  # bytes, not text mode: \r\n stays as it is in the file
    return 0


def read_jsonl(path, column, skip):
    skipped = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():  # a blank line (e.g. a trailing one) is no document
                continue
            if skipped < skip:
                skipped += 1
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})")
            text = row.get(column) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise InputError(f"{path}:{lineno}: no text field {column!r} (name the field with --text_column)")
            yield text
    return skipped


def open_parquet(path, column):
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read {path} as parquet ({e})")
    types = dict(zip(pf.schema_arrow.names, pf.schema_arrow.types, strict=True))  # one type per column name
    if types.get(column) not in (pa.string(), pa.large_string()):
        raise InputError(
            f"{path} has no text column {column!r} (it has {', '.join(types)}; name it with --text_column)"
        )
    return pf


def read_parquet(path, column, skip):
    pf = open_parquet(path, column)
    rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    first = skipped = 0
    while first < len(rows) and skipped + rows[first] <= skip:  # whole row groups are skipped unread
        skipped += rows[first]
        first += 1
    # batch by batch, one column: memory stays flat however large the file and its row groups are
    for batch in pf.iter_batches(batch_size=1024, row_groups=range(first, len(rows)), columns=[column]):
        texts = batch.column(0)
        if texts.null_count:
            raise InputError(f"{path}: column {column!r} has missing values")
        k = min(skip - skipped, len(texts))
        skipped += k
        yield from texts.slice(k).to_pylist()
    return skipped


READERS = {".txt": read_txt, ".jsonl": read_jsonl, ".parquet": read_parquet}


def hf_documents(args, skip):
    from datasets import load_dataset  # slow to import, and only this source needs it

    # Broad on purpose: datasets and huggingface_hub raise ConnectionError offline, ValueError for an unknown config,
    # RuntimeError for a script dataset and their own errors for the rest, kinds that change between versions. The try
    # holds this one call, so it hides no bug of ours, and every one of them is the same one line for the user.
    try:
        ds = load_dataset(args.dataset, name=args.name, split="train", streaming=args.streaming)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot load dataset {args.dataset!r} (name {args.name}): {e}")
    if ds.column_names is not None and args.text_column not in ds.column_names:
        raise InputError(
            f"dataset {args.dataset!r} has no column {args.text_column!r} (it has {', '.join(ds.column_names)})"
        )
    # skip() selects an index range (streaming: the skipped rows are still downloaded, but not tokenized)
    for batch in ds.select_columns([args.text_column]).skip(skip).iter(batch_size=1024):
        yield from batch[args.text_column]


def documents(args, skip):
    """The text of every document in order (files in the order given, rows in file order), after the first `skip`."""
    if args.files is None:
        yield from hf_documents(args, skip)
        return
    for path in args.files:
        try:
            skip -= yield from READERS[path.suffix](path, args.text_column, skip)
        except (OSError, UnicodeDecodeError, pa.ArrowException) as e:
            raise InputError(f"cannot read {path} ({e})")


def download(url, path):
    """Fetch url into path once, through a temporary name: an interrupted download never looks complete."""
    if not path.exists():
        made = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)
        except (OSError, http.client.HTTPException) as e:
            tmp.unlink(missing_ok=True)
            if made:  # a failed download leaves no trace, not even an empty folder
                path.parent.rmdir()
            raise InputError(f"cannot download {url} ({e}); offline, pass a local copy with --input")
        os.replace(tmp, path)
    return path


# -----------------------------------------------------------------------------
# tokenizing, in this process or in a Pool of workers that each load their own encoder

enc = None  # the gpt2 encoder, loaded once per process


def load_encoder():
    global enc
    enc = gpt2_tokenizer()
    assert enc.max_token_value < 2**16, "every token id must fit in uint16"


def init_worker():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process to report, once
    if enc is None:  # a forked worker has the main process's encoder already; a spawned one loads its own (0.2 s)
        load_encoder()


def tokenize(text):
    try:  # encode_ordinary's tokens in a numpy buffer: ~1.2x faster than a list of ints made into an array
        bpe = enc.encode_to_numpy(text, disallowed_special=())
    except UnicodeEncodeError:  # lone surrogates (JSON can hold them): encode_ordinary replaces them first
        bpe = enc.encode_ordinary(text)
    tokens = np.empty(len(bpe) + 1, dtype=np.uint16)  # uint16: half of uint32's bytes to ship to the main process
    tokens[0], tokens[1:] = EOT_TOKEN, bpe
    return tokens


def tokenized(docs, num_proc):
    """[EOT] + tokens of each document, in document order."""
    if num_proc == 1:
        yield from map(tokenize, docs)
        return
    with mp.Pool(num_proc, initializer=init_worker) as pool:
        # imap streams the documents through the pool in order (memory stays flat). Each message wakes
        # threads and processes up: 128 documents a message (~0.5 MB of FineWeb text) rather than 16 took
        # 2 workers on 2 cores from ~1.35x to ~1.85x the tokens/s of one process
        yield from pool.imap(tokenize, docs, chunksize=128)


# -----------------------------------------------------------------------------
# writing shards and the manifest


def save_json(path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def load_manifest(out, config):
    """The manifest of an earlier run of this command in `out`, or a new one. Never touches another run's folder."""
    path = out / MANIFEST
    if not path.exists():
        if any(out.glob("*.npy")):
            raise InputError(f"{out}/ holds .npy files but no {MANIFEST}: they are not from this run; pass a new --out")
        return {"config": config, "shards": [], "complete": False}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path} ({e}); pass a new --out")
    for key, value in config.items():
        if manifest["config"].get(key) != value:
            raise InputError(
                f"{out}/ holds the shards of another run ({key} {manifest['config'].get(key)!r} there, "
                f"{value!r} now); pass a new --out, or that run's arguments to finish it"
            )
    return manifest


def save_shard(out, manifest, tokens, end):
    """Write the next shard under a temporary name and rename it, then record where it ends in the input:
    a final name always holds a complete shard, and the manifest lists only shards that exist."""
    index = len(manifest["shards"])
    name = f"{manifest['config']['prefix']}_{'val' if index == 0 else 'train'}_{index:06d}.npy"
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MANIFEST).exists():  # name the run before its first shard appears, so a restart recognizes it
        save_json(out / MANIFEST, manifest)
    tmp = out / f".{index:06d}.tmp"  # neither *.npy nor holding a split name: no loader takes it for a shard
    with open(tmp, "wb") as f:  # a file object: given a name, np.save would append .npy to it
        np.save(f, tokens)
        f.flush()
        os.fsync(f.fileno())  # the data reaches the disk before the rename that publishes it
    os.replace(tmp, out / name)
    manifest["shards"].append({"file": name, "tokens": len(tokens), "end_doc": end[0], "end_offset": end[1]})
    save_json(out / MANIFEST, manifest)
    tqdm.write(f"wrote {out / name} ({len(tokens):,} tokens)")


def write_shards(stream, out, manifest, start, bar):
    """Pack the tokens of documents start[0], start[0]+1, ... (the first from its token start[1] on) into
    shards; a document that does not fit continues in the next shard. Returns the number of documents read."""
    shard_size = manifest["config"]["shard_size"]
    buf = np.empty(shard_size, dtype=np.uint16)
    fill, ndocs, offset = 0, start[0], start[1]
    for doc, tokens in enumerate(stream, start=start[0]):
        pos, offset = offset, 0
        while pos < len(tokens):
            n = min(shard_size - fill, len(tokens) - pos)
            buf[fill : fill + n] = tokens[pos : pos + n]
            fill, pos = fill + n, pos + n
            bar.update(n)
            if fill == shard_size:  # a full shard ends here: after this document, or inside it
                save_shard(out, manifest, buf, (doc + 1, 0) if pos == len(tokens) else (doc, pos))
                fill = 0
        ndocs = doc + 1
    if fill:
        save_shard(out, manifest, buf[:fill], (ndocs, 0))
    return ndocs


# -----------------------------------------------------------------------------


def count(value):
    """argparse type: a positive whole number, written 100000000 or 1e8."""
    number = float(value)
    if not number.is_integer() or number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(number)


def parse_args(argv):
    parser = ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--input",
        nargs="+",
        metavar="FILE",
        help="local .txt (one document per file), .jsonl or .parquet (one document per row) files or globs,"
        " read in the order given",
    )
    source.add_argument(
        "--dataset",
        default=FINEWEB_EDU,
        help="HuggingFace dataset (its train split), or tinyshakespeare: the tinyshakespeare/input.txt that ships"
        " beside this script (downloaded there once if it is missing)",
    )
    parser.add_argument("--name", default=None, help="dataset config (not given: sample-10BT for FineWeb-Edu)")
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="read the HuggingFace dataset while it downloads instead of downloading it all first",
    )
    parser.add_argument("--text_column", default="text", help="the document field of .jsonl, .parquet and dataset rows")
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (not given: edu_fineweb10B for FineWeb-Edu sample-10BT, tinyshakespeare for --dataset"
        " tinyshakespeare, else the folder name of the first --input or the dataset's name)",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="shard name prefix (not given: edufineweb for FineWeb-Edu, else the --out folder's name)",
    )
    parser.add_argument(
        "--shard_size", type=count, default=10**8, help="tokens per shard (the last shard may hold fewer)"
    )
    parser.add_argument(
        "--num_proc", type=count, default=os.cpu_count(), help="tokenizer processes (1: tokenize in this process)"
    )
    return parser.parse_args(argv)


def expand(patterns, column):
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))  # an existing plain path globs to itself
        if not matches:
            raise InputError(f"--input {pattern!r} matches no file")
        files += map(Path, matches)
    for path in files:
        if path.suffix not in READERS:
            raise InputError(f"--input {path}: not a .txt, .jsonl or .parquet file")
        if path.suffix == ".parquet":
            open_parquet(path, column)  # a bad file fails now, not hours into the run
    return files


def resolve(args):
    """Fill in the input files and the defaults that depend on the source. Returns the settings that
    determine the output, which a restart must repeat."""
    fineweb = not args.input and args.dataset == FINEWEB_EDU
    args.name = args.name or ("sample-10BT" if fineweb else None)
    args.files = None
    if args.input:
        args.files = expand(args.input, args.text_column)
        out = args.files[0].resolve().parent.name
    elif args.dataset == "tinyshakespeare":
        # the shipped text; the download is for a copy of fineweb.py without the repository around it
        shipped = TINYSHAKESPEARE.exists()
        args.files = [TINYSHAKESPEARE if shipped else download(TINYSHAKESPEARE_URL, TINYSHAKESPEARE)]
        out = "tinyshakespeare"
    else:
        out = (
            "edu_fineweb10B"
            if fineweb and args.name == "sample-10BT"
            else "_".join(filter(None, [Path(args.dataset).name, args.name]))
        )
    args.out = Path(args.out or out)
    args.prefix = args.prefix or ("edufineweb" if fineweb else args.out.name)
    source = [str(f.resolve()) for f in args.files] if args.files else {"dataset": args.dataset, "name": args.name}
    return {"source": source, "text_column": args.text_column, "shard_size": args.shard_size, "prefix": args.prefix}


def run(args):
    config = resolve(args)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file, not a folder: name a folder for the shards")
    manifest = load_manifest(args.out, config)
    shards = manifest["shards"]
    if manifest["complete"]:
        print(f"fineweb.py: {args.out}/ already holds all {len(shards)} shards of this run; nothing to do")
        return
    start = (shards[-1]["end_doc"], shards[-1]["end_offset"]) if shards else (0, 0)
    done = sum(s["tokens"] for s in shards)
    load_encoder()
    t0 = time.time()
    with tqdm(unit="tok", unit_scale=True, initial=done, desc=str(args.out), disable=None) as bar:  # no bar in logs
        stream = tokenized(documents(args, skip=start[0]), args.num_proc)
        ndocs = write_shards(stream, args.out, manifest, start, bar)
    if not manifest["shards"]:
        raise InputError("the input holds no documents: nothing to write")
    manifest["complete"] = True
    save_json(args.out / MANIFEST, manifest)
    total, dt = sum(s["tokens"] for s in manifest["shards"]), time.time() - t0
    print(
        f"fineweb.py: {ndocs:,} documents, {total:,} tokens, {len(manifest['shards'])} shards (1 val) in {args.out}/; "
        f"this run wrote {total - done:,} tokens in {dt:.1f}s ({(total - done) / dt:,.0f} tokens/s)"
    )


def main(argv=None):
    try:
        run(parse_args(argv))
    except (InputError, OSError) as e:  # OSError: e.g. the disk is full or --out is not writable
        raise SystemExit(f"fineweb.py: {e}".replace("\n", " "))
    except (KeyboardInterrupt, RuntimeError) as e:
        # a Ctrl-C inside tqdm's output lock surfaces as its RuntimeError (releasing the lock it never took)
        if isinstance(e, RuntimeError) and not isinstance(e.__context__, KeyboardInterrupt):
            raise
        raise SystemExit("fineweb.py: interrupted; run the same command again to continue where it stopped")


if __name__ == "__main__":
    main()
