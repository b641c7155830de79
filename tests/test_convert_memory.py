"""Streaming: peak memory of ``quantkit convert`` does not grow with the size of the largest tensor.

Two hand-made 1-layer Llamas differ only in width: the embedding of the wide one is 49152 x 2048
(400 MB as float32, 200 MB on disk), of the narrow one 49152 x 64 (12.6 MB). Converted in fresh
processes, their peak RSS differs by far less than that tensor (one row chunk of 32 MB plus its
encodings), because tensors are read, converted and written in row chunks. (benchmarks/bench_convert.py
measures the same against llama.cpp's converter on multi-GB sharded models.)
"""

import os
import subprocess
import sys

from test_convert_support import LLAMA_CONFIG, llama_weights, make_llama_folder

WIDE = {**LLAMA_CONFIG, "hidden_size": 2048, "intermediate_size": 256, "num_attention_heads": 16,
        "num_key_value_heads": 16}


def peak_rss_mb(folder, out) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "quantkit.cli", "convert", str(folder), "-o", str(out), "--type", "F16"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss / 1024


def test_peak_rss_flat_in_tensor_size(tmp_path, smollm2_hf_dir):
    narrow = make_llama_folder(tmp_path / "narrow", smollm2_hf_dir)
    wide = make_llama_folder(tmp_path / "wide", smollm2_hf_dir, llama_weights(WIDE), WIDE)
    embedding_mb = 49152 * 2048 * 4 / 2**20
    growth = peak_rss_mb(wide, tmp_path / "wide.gguf") - peak_rss_mb(narrow, tmp_path / "narrow.gguf")
    assert (tmp_path / "wide.gguf").stat().st_size > 200e6
    assert growth < embedding_mb / 4, f"peak RSS grew by {growth:.0f} MB for a {embedding_mb:.0f} MB tensor"
