"""Wall time and peak memory of LoRA conversion, convert --lora and split output, against their peers.

Each run is a fresh process (imports included); peak RSS is its VmHWM (``run_measured`` in
tests/test_convert_support.py). The adapter is made by ``make_lora_adapter``: rank 8, float32, on the 7
projections of SmolLM2-135M's 30 layers. Cases:

- ``quantkit lora`` vs llama.cpp's convert_lora_to_gguf.py, F16 and Q8_0;
- ``quantkit convert`` to Q8_0 with and without ``--lora``;
- ``quantkit convert`` to Q8_0 with ``--split-max-size 50M`` vs convert_hf_to_gguf.py with the same.

    python benchmarks/bench_lora_split.py

Prints a markdown table.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_convert_support import _env, make_lora_adapter, peer_dir, run_measured  # noqa: E402

from quantkit.models import smollm2_hf_dir  # noqa: E402


def main() -> None:
    import os

    base = smollm2_hf_dir()
    root = peer_dir()
    peer_env = {**_env(), "PYTHONPATH": str(root / "gguf-py")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = make_lora_adapter(tmp / "adapter", base)
        qk = [sys.executable, "-m", "quantkit.cli"]
        cases = [
            ("quantkit lora -t F16", qk + ["lora", adapter, "--base", base, "-o", tmp / "a.gguf", "-t", "F16", "--force"], None),
            ("convert_lora_to_gguf --outtype f16", [sys.executable, root / "convert_lora_to_gguf.py", adapter, "--base", base,
                                                    "--outtype", "f16", "--outfile", tmp / "pa.gguf"], peer_env),
            ("quantkit lora -t Q8_0", qk + ["lora", adapter, "--base", base, "-o", tmp / "a.gguf", "-t", "Q8_0", "--force"], None),
            ("convert_lora_to_gguf --outtype q8_0", [sys.executable, root / "convert_lora_to_gguf.py", adapter, "--base", base,
                                                     "--outtype", "q8_0", "--outfile", tmp / "pa.gguf"], peer_env),
            ("quantkit convert -t Q8_0", qk + ["convert", base, "-o", tmp / "m.gguf", "-t", "Q8_0", "--force"], None),
            ("quantkit convert --lora -t Q8_0", qk + ["convert", base, "--lora", adapter, "-o", tmp / "m.gguf", "-t", "Q8_0",
                                                     "--force"], None),
            ("quantkit convert -t Q8_0 --split-max-size 50M", qk + ["convert", base, "-o", tmp / "s.gguf", "-t", "Q8_0",
                                                                   "--split-max-size", "50M", "--force"], None),
            ("convert_hf_to_gguf --outtype q8_0 --split-max-size 50M", [
                sys.executable, root / "convert_hf_to_gguf.py", base, "--outtype", "q8_0", "--outfile", tmp / "p" / "s.gguf",
                "--split-max-size", "50M"], peer_env),
        ]
        (tmp / "p").mkdir()
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        print("| case | s | peak RSS MB |\n|---|---:|---:|")
        for label, cmd, env in cases:
            seconds, peak = run_measured([str(c) for c in cmd], env=env)
            print(f"| {label} | {seconds:.1f} | {peak:.0f} |", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
