"""Streaming: peak memory of ``quantkit convert`` does not grow with the size of the largest tensor.

Two hand-made 1-layer Llamas differ only in width: their embeddings are 49152 x 1024 and 49152 x 2048
(192 and 384 MB as float32), both larger than a row chunk (32 MB of float32). Converted in fresh
processes, their peak RSS (VmHWM) differs by far less than the 192 MB the largest tensor grew,
because tensors are read, converted and written in row chunks. (benchmarks/bench_convert.py measures
the same against llama.cpp's converter on multi-GB sharded models.)
"""

import os
import sys

from test_convert_support import LLAMA_CONFIG, llama_weights, make_llama_folder, run_measured


def config(width: int) -> dict:
    return {**LLAMA_CONFIG, "hidden_size": width, "intermediate_size": 256, "num_attention_heads": width // 128,
            "num_key_value_heads": width // 128}


def peak_rss_mb(folder, out) -> float:
    command = [sys.executable, "-m", "quantkit.cli", "convert", str(folder), "-o", str(out), "--type", "F16"]
    return run_measured(command, {**os.environ, "HF_HUB_OFFLINE": "1"})[1]


def test_peak_rss_flat_in_tensor_size(tmp_path, smollm2_hf_dir):
    peaks = {}
    for width in (1024, 2048):
        folder = make_llama_folder(tmp_path / str(width), smollm2_hf_dir, llama_weights(config(width)), config(width))
        peaks[width] = peak_rss_mb(folder, tmp_path / f"{width}.gguf")
    tensor_growth_mb = 49152 * (2048 - 1024) * 4 / 2**20
    assert (tmp_path / "2048.gguf").stat().st_size > 200e6
    assert peaks[2048] - peaks[1024] < tensor_growth_mb / 4, (peaks, tensor_growth_mb)
