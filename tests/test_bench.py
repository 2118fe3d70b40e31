"""tools/bench.py end to end at the tiniest settings: every benchmark runs and the last line holds every figure.
These settings measure nothing, so no speed is asserted; only that each figure is there and positive."""

import json

# the JSON object's figures, and the table row that shows them
ROWS = {
    "peak": "matmul peak",
    "train": "train step",
    "generate": "generate",
    "hellaswag": "hellaswag",
    "fineweb": "fineweb",
}
FIGURES = {
    "peak": ["bf16_flops", "fp32_flops"],
    "train": ["ours_tokens_per_s", "hf_tokens_per_s", "ratio", "ours_mfu", "hf_mfu", "flops_per_token", "peak_flops"],
    "generate": ["cache_tokens_per_s", "no_cache_tokens_per_s", "ratio", "agreeing_tokens"],
    "hellaswag": ["batched_examples_per_s", "single_examples_per_s", "reference_examples_per_s", "ratio", "n"],
    "fineweb": [
        "pool_tokens_per_s",
        "loop_tokens_per_s",
        "ceiling_tokens_per_s",
        "ratio",
        "ceiling_ratio",
        "tokens",
        "documents",
        "num_proc",
    ],
}


def test_quick_run_ends_with_a_json_line_of_every_figure(run, shared_data, tmp_path):
    # float32: greedy decoding and HellaSwag scoring must then agree exactly between the two paths
    tiny = [
        "--quick",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--repeats",
        "1",
        "--new_tokens",
        "4",
        "--hellaswag_n",
        "4",
        "--hellaswag_batch",
        "2",
        "--fineweb_docs",
        "20",
        "--num_proc",
        "2",
        "--hellaswag_dir",
        str(shared_data / "hellaswag"),
        "--text",
        str(shared_data / "tinyshakespeare" / "input.txt"),
    ]
    proc = run("tools/bench.py", *tiny, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    result = json.loads(lines[-1])
    for benchmark, keys in FIGURES.items():
        for key in keys:
            value = result[benchmark][key]
            assert type(value) in (int, float) and value > 0, (benchmark, key, value)
        assert any(line.startswith(ROWS[benchmark] + " ") for line in lines), ROWS[benchmark]
    assert result["generate"]["same_tokens"] and result["generate"]["agreeing_tokens"] == 4
    assert result["hellaswag"]["same_counts"] and result["hellaswag"]["n"] == 4
    assert result["fineweb"]["documents"] == 20
    assert result["config"]["n_layer"] == 1 and result["config"]["compile"] is False
    assert list(tmp_path.iterdir()) == []  # the fineweb corpus and shards went to a temporary folder, now gone


def test_unknown_benchmark_is_refused_in_one_line(run, tmp_path):
    proc = run("tools/bench.py", "--only", "train,sampling", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "unknown benchmark sampling" in proc.stderr


def test_cpu_defaults_are_the_mini_config_and_flags_win_over_quick(repo, monkeypatch):
    monkeypatch.syspath_prepend(repo / "tools")  # where the script's own folder puts it
    import bench

    args = bench.parse_args(["--device", "cpu"])
    c = args.model_config
    assert (c.n_layer, c.n_head, c.n_embd, c.vocab_size, args.seq_len, args.batch_size, args.compile) == (
        4,
        4,
        256,
        50304,
        256,
        8,
        True,
    )
    args = bench.parse_args(["--device", "cpu", "--quick", "--n_layer", "2", "--repeats", "3"])
    assert (args.model_config.n_layer, args.repeats, args.compile) == (2, 3, False)
