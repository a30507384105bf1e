"""The GGUF tokenizer is read without torch (the llamacpp extra has none), and it is transformers' own."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from _data import SCIFACT, needs_data
from servers import embedded_gguf

# Run in a child where torch cannot be imported (and find_spec says it is absent), as on a machine
# with only the llamacpp extra.
BUILD_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
from reasonrank.tokenizer import tokenizer_from_gguf
tok = tokenizer_from_gguf(sys.argv[1])
tok.save_pretrained(sys.argv[2])
print(type(tok).__name__, sys.modules["torch"] is not None)
"""


@pytest.mark.model
@needs_data
def test_gguf_tokenizer_without_torch_is_transformers_own(tmp_path):
    gguf = embedded_gguf()
    if gguf is None:
        pytest.skip("embedded GGUF not assembled (scripts/setup.sh)")
    pytest.importorskip("torch", reason="the reference is transformers' GGUF reader, which needs torch")
    import transformers

    out = subprocess.run([sys.executable, "-c", BUILD_WITHOUT_TORCH, str(gguf), str(tmp_path / "ours")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"  # built with torch never imported

    reference = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    reference.save_pretrained(str(tmp_path / "reference"))
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "reference"))  # as load_tokenizer reads it back
    ours = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "ours"))
    # the whole backend (vocabulary, merges, normalizer, pre-tokenizer, decoder, added tokens) is equal
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(reference.backend_tokenizer.to_str())

    texts = ["<think>x</think> <|im_start|>user\n héllo  é e\u0301 \t\n\n  [3] > [1]<|endoftext|>", "日本語 🤖", "  lead"]
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as fh:
        texts += [(row := json.loads(line))["title"] + "\n" + row["text"] for line, _ in zip(fh, range(300))]
    for text in texts:
        tokens = ours.tokenize(text)
        assert tokens == reference.tokenize(text), text[:80]
        assert ours.encode(text) == reference.encode(text)
        # passage truncation: the first 100 tokens back to text
        assert ours.convert_tokens_to_string(tokens[:100]) == reference.convert_tokens_to_string(tokens[:100])
    messages = [{"role": "system", "content": "You rank passages."}, {"role": "user", "content": texts[3]}]
    assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (ours.eos_token, ours.pad_token, ours.bos_token) == (reference.eos_token, reference.pad_token, reference.bos_token)


def test_non_gguf_or_unknown_vocabularies_are_left_to_transformers(tmp_path):
    """A GGUF whose vocabulary we do not build (here: sentencepiece) gives None, so load_tokenizer
    falls back to transformers' reader."""
    gguf = pytest.importorskip("gguf")
    from reasonrank.tokenizer import tokenizer_from_gguf

    path = tmp_path / "spm.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", "\u2581a"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert tokenizer_from_gguf(Path(path)) is None
