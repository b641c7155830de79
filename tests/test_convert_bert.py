"""quantkit convert on all-MiniLM-L6-v2 (BertModel, fp32, WordPiece tokenizer, mean pooling).

Must show: the same GGUF as llama.cpp's convert_hf_to_gguf.py (f16 and q8_0), and llama.cpp
embeddings from quantkit's F16 file equal to sentence-transformers' fp32 ones (cosine >= 0.999).
"""

import os

import numpy as np
import pytest
from test_convert_support import LlamaServer, gguf_differences, peer_convert, quantkit_convert

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "The cat sits on the mat.",
    "A man is playing a guitar on stage.",
    "Quantization trades a little accuracy for a lot less memory.",
    "Ünïcödé text, numbers 3.14159 and CAPITALS survive lowercasing?",
    "def add(a, b): return a + b",
]


@pytest.mark.parametrize("preset, outtype", [("F16", "f16"), ("Q8_0", "q8_0")])
def test_same_file_as_llama_cpp_converter(minilm_dir, preset, outtype):
    assert gguf_differences(quantkit_convert(minilm_dir, preset), peer_convert(minilm_dir, outtype)) == []


def test_bert_metadata(minilm_dir):
    from quantkit import read_gguf

    with read_gguf(quantkit_convert(minilm_dir, "F16")) as f:
        assert f.metadata["general.architecture"] == "bert"
        assert f.metadata["tokenizer.ggml.model"] == "bert"
        assert f.metadata["bert.pooling_type"] == 1  # mean
        assert f.metadata["bert.attention.causal"] is False
        assert f.metadata["tokenizer.ggml.normalizer.lowercase"] is True
        tokens = f.metadata["tokenizer.ggml.tokens"]
        assert tokens[101] == "[CLS]" and tokens[2005] == "\u2581for"  # phantom-space WordPiece
        assert {t.name: t.qtype.name for t in f.tensors}["position_embd.weight"] == "F32"


def test_llama_cpp_embeddings_match_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    with LlamaServer(quantkit_convert(minilm_dir, "F16"), embedding=True) as server:
        ours = server.embed(SENTENCES)
    cosine = np.sum(ours * expected, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.999, cosine
