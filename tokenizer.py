"""
The GPT-2 tokenizer every script reads and writes with: tiktoken's `gpt2` BPE and its two numbers.

No torch here: fineweb.py's tokenizer processes import it, and must stay light.
"""

from cli import InputError

EOT_TOKEN = 50256  # <|endoftext|>: opens every document, telling the model that a new, unrelated text begins
GPT2_VOCAB_SIZE = 50257  # real tokens; ids at or above this are embedding padding, never data


def gpt2_tokenizer():
    """tiktoken's GPT-2 BPE: its files download once into tiktoken's cache (offline: TIKTOKEN_CACHE_DIR)."""
    import tiktoken  # a second or so: only for the scripts that tokenize

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # noqa: BLE001  requests' connection errors and friends: no network and no cached files
        raise InputError(
            f"cannot load tiktoken's gpt2 encoding ({type(e).__name__}): connect to the internet once,"
            " or set TIKTOKEN_CACHE_DIR to a folder holding its files"
        )
