"""Whole-process speed: ``quantkit quantize`` vs llama.cpp's llama-quantize, and ``quantkit inspect``.

Each run is a fresh process, as a user runs it (imports, kernel loading, metadata, writing and fsync
included): ``python -m quantkit.cli quantize SRC OUT PRESET --threads T`` against
``llama_cpp.llama_model_quantize`` (llama-cpp-python 0.3.36, ``nthread = T``) in its own Python
process. The two alternate run by run (the order flips each repeat), so both see the same load on a
shared machine; the table gives the median wall time of each, their ratio and whether the two
files are byte-identical. Cases:

- SmolLM2-135M-Instruct, the BF16 GGUF ``quantkit convert`` makes of its Hugging Face folder;
- with ``--large-gb G``: a synthetic Llama (random bf16, Llama-3.2-1B-like width, SmolLM2's
  tokenizer; bench_convert.make_synthetic_llama) of G GB (2.4: 1.2 B parameters), converted to a
  BF16 GGUF once, large enough that the kernels dominate;
- with ``--convert``: ``quantkit convert FOLDER --type Q4_K_M`` in one pass against llama.cpp's
  two steps (convert_hf_to_gguf.py --outtype bf16, then llama-quantize), and --type Q8_0 against
  convert_hf_to_gguf.py --outtype q8_0, on SmolLM2;
- with ``--inspect``: ``quantkit inspect`` (text and --json) on a 7B-shaped Q4_K GGUF (Llama-2-7B
  geometry, 291 tensors, 3.9 GB of tensor data as a sparse file: only the header is written).

    python benchmarks/bench_e2e.py [--presets Q8_0,Q6_K,...] [--repeats 3] [--threads 2]
        [--large-gb 2.4 --large-presets Q8_0,Q4_0,Q6_K,Q4_K_M --large-repeats 1] [--convert] [--inspect]
        [--skip-smollm2] [--work /tmp/quantkit-bench-e2e]

Prints markdown tables (quantkit / llama-quantize: below 1 is faster).
"""

from __future__ import annotations

import argparse
import filecmp
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_convert_support import llama_quantize_command, peer_dir  # noqa: E402

PRESETS = "Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K,IQ4_XS,IQ3_M"
LARGE_PRESETS = "Q8_0,Q4_0,Q6_K,Q4_K_M"


def run(cmd: list[str]) -> float:
    """Wall seconds of ``cmd``, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))}... failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    return seconds


def quantkit_quantize(src: Path, dst: Path, preset: str, threads: int) -> list[str]:
    return [sys.executable, "-m", "quantkit.cli", "quantize", str(src), str(dst), preset, "--threads", str(threads),
            "--force"]


def quantkit_convert(folder: Path, dst: Path, preset: str, threads: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "quantkit.cli", "convert", str(folder), "-o", str(dst), "--type", preset, "--force"]
    return cmd + (["--threads", str(threads)] if threads else [])


def compare_presets(label: str, src: Path, work: Path, presets: list[str], repeats: int, threads: int) -> None:
    """One table row per preset: medians of interleaved runs, ratio, bytes identical."""
    print(f"\n{label}, {threads} threads each, median of {repeats}:\n")
    print("| preset | llama-quantize s | quantkit s | quantkit / llama-quantize | bytes identical |")
    print("|---|---:|---:|---:|---|", flush=True)
    for preset in presets:
        ours_out, theirs_out = work / f"{src.stem}-quantkit-{preset}.gguf", work / f"{src.stem}-llama-{preset}.gguf"
        ours, theirs = [], []
        for i in range(repeats):
            steps = [(ours, quantkit_quantize(src, ours_out, preset, threads)),
                     (theirs, llama_quantize_command(src, theirs_out, preset, threads))]
            for times, cmd in (steps if i % 2 else steps[::-1]):
                times.append(run(cmd))
        same = filecmp.cmp(ours_out, theirs_out, shallow=False)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"| {preset} | {b:.2f} | {a:.2f} | {a / b:.2f} | {'yes' if same else 'NO'} |", flush=True)
        ours_out.unlink()
        theirs_out.unlink()


def compare_convert(folder: Path, work: Path, repeats: int, threads: int) -> None:
    """quantkit convert (one pass) vs convert_hf_to_gguf.py (+ llama-quantize for a k-quant preset)."""
    peer = peer_dir()
    print(f"\nconvert, {folder.name}, median of {repeats} (peer: convert_hf_to_gguf.py, then llama-quantize "
          f"with {threads} threads; quantkit: --threads {threads}):\n")
    print("| case | peer s | quantkit s | quantkit / peer | bytes identical |")
    print("|---|---:|---:|---:|---|", flush=True)
    for preset in ("Q8_0", "Q4_K_M"):
        ours_out, theirs_out = work / f"convert-quantkit-{preset}.gguf", work / f"convert-peer-{preset}.gguf"
        step = work / "convert-peer-bf16.gguf"
        if preset == "Q8_0":
            peer_cmds = [[sys.executable, str(peer / "convert_hf_to_gguf.py"), str(folder), "--outtype", "q8_0",
                          "--outfile", str(theirs_out)]]
        else:
            peer_cmds = [[sys.executable, str(peer / "convert_hf_to_gguf.py"), str(folder), "--outtype", "bf16",
                          "--outfile", str(step)], llama_quantize_command(step, theirs_out, preset, threads)]
        ours, theirs = [], []
        for i in range(repeats):
            def peer_run():
                theirs.append(sum(run(cmd) for cmd in peer_cmds))

            def ours_run():
                ours.append(run(quantkit_convert(folder, ours_out, preset, threads)))

            for step_run in ((ours_run, peer_run) if i % 2 else (peer_run, ours_run)):
                step_run()
        same = filecmp.cmp(ours_out, theirs_out, shallow=False)
        a, b = statistics.median(ours), statistics.median(theirs)
        label = "--type Q8_0 vs --outtype q8_0" if preset == "Q8_0" else "--type Q4_K_M vs --outtype bf16 + llama-quantize"
        print(f"| {label} | {b:.2f} | {a:.2f} | {a / b:.2f} | {'yes' if same else 'NO'} |", flush=True)
        for p in (ours_out, theirs_out, step):
            p.unlink(missing_ok=True)


def smollm2_bf16(work: Path) -> Path:
    from quantkit.models import smollm2_hf_dir

    path = work / "SmolLM2-135M-Instruct-BF16.gguf"
    if not path.exists():
        run(quantkit_convert(smollm2_hf_dir(), path, "BF16"))
    return path


def large_bf16(work: Path, gb: float) -> tuple[Path, str]:
    """The synthetic Llama of ``gb`` GB as a BF16 GGUF (its HF folder removed after conversion)."""
    from quantkit import read_gguf

    path = work / f"synthetic-llama-{gb:g}GB-BF16.gguf"
    if not path.exists():
        folder = work / f"synthetic-llama-{gb:g}GB"
        if not folder.exists():
            subprocess.run([sys.executable, str(Path(__file__).parent / "bench_convert.py"), "--make-synthetic",
                            str(folder), str(gb)], check=True, stdout=subprocess.DEVNULL)
        run(quantkit_convert(folder, path, "BF16"))
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    with read_gguf(path) as f:
        params = sum(int(t.nbytes) // 2 for t in f.tensors if t.qtype.name == "BF16")
        layers = f.metadata["llama.block_count"]
    return path, f"synthetic Llama {params / 1e9:.2f} B parameters ({layers} layers, 2048 wide), BF16 GGUF"


def seven_b_gguf(work: Path, tokenizer_gguf: Path) -> Path:
    """A Llama-2-7B-shaped GGUF (4096 wide, 11008 ff, 32 layers, 32000 x 4096 embeddings; Q4_K, norms F32,
    output Q6_K) with SmolLM2's tokenizer keys; the tensor data is a hole (sparse file)."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFValueType as V

    from quantkit import read_gguf
    from quantkit.ggufio import typed
    from quantkit.ggufio.writer import _pack_string, encode_kv, tensor_sizes, TensorInfo

    path = work / "llama-7b-shaped-Q4_K.gguf"
    if path.exists():
        return path
    hidden, ff, layers, vocab = 4096, 11008, 32, 32000
    infos = [TensorInfo("token_embd.weight", T.Q4_K, (vocab, hidden))]
    for i in range(layers):
        b = f"blk.{i}."
        infos += [TensorInfo(b + "attn_norm.weight", T.F32, (hidden,)), TensorInfo(b + "ffn_norm.weight", T.F32, (hidden,))]
        infos += [TensorInfo(b + n, T.Q4_K, (hidden, hidden)) for n in ("attn_q.weight", "attn_k.weight",
                                                                        "attn_v.weight", "attn_output.weight")]
        infos += [TensorInfo(b + "ffn_gate.weight", T.Q4_K, (ff, hidden)), TensorInfo(b + "ffn_up.weight", T.Q4_K, (ff, hidden)),
                  TensorInfo(b + "ffn_down.weight", T.Q4_K, (hidden, ff))]
    infos += [TensorInfo("output_norm.weight", T.F32, (hidden,)), TensorInfo("output.weight", T.Q6_K, (vocab, hidden))]
    with read_gguf(tokenizer_gguf) as f:
        metadata = {k: v for k, v in f.metadata.items() if k.startswith(("general.", "tokenizer."))}
        types = {k: f.metadata.value_type(k) for k in metadata}
    metadata.update({"llama.block_count": typed(layers, V.UINT32), "llama.embedding_length": typed(hidden, V.UINT32),
                     "llama.feed_forward_length": typed(ff, V.UINT32), "llama.context_length": typed(4096, V.UINT32)})
    header = [b"GGUF", struct.pack("<IQQ", 3, len(infos), len(metadata))]
    header += [encode_kv(k, v, types.get(k)) for k, v in metadata.items()]
    offset, sizes = 0, tensor_sizes(infos)
    for info, size in zip(infos, sizes):
        header += [_pack_string(info.name), struct.pack(f"<I{len(info.shape)}Q", len(info.shape), *reversed(info.shape)),
                   struct.pack("<IQ", info.qtype, offset)]
        offset += -(-size // 32) * 32
    raw = b"".join(header)
    with open(path, "wb") as out:
        out.write(raw)
        out.truncate(-(-len(raw) // 32) * 32 + offset)  # the data section: a hole
    return path


def inspect_times(path: Path, repeats: int) -> None:
    from quantkit import read_gguf

    with read_gguf(path) as f:
        n_tensors, weights = len(f.tensors), sum(t.nbytes for t in f.tensors)
    print(f"\nquantkit inspect, {path.name} ({n_tensors} tensors, {weights / 1e9:.2f} GB of tensor data), "
          f"median of {repeats} fresh processes:\n")
    print("| command | wall s |")
    print("|---|---:|")
    for extra in ([], ["--json"]):
        cmd = [sys.executable, "-m", "quantkit.cli", "inspect", str(path), *extra]
        seconds = statistics.median(run(cmd) for _ in range(repeats))
        print(f"| quantkit inspect {' '.join(extra + ['FILE'])} | {seconds:.2f} |", flush=True)
    start = time.perf_counter()
    with read_gguf(path):
        pass
    print(f"| read_gguf(FILE) in a warm process | {time.perf_counter() - start:.3f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=PRESETS, help=f"comma-separated (default {PRESETS})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--large-gb", type=float, default=0.0, help="GB of bf16 of the synthetic Llama (0: none)")
    parser.add_argument("--large-presets", default=LARGE_PRESETS)
    parser.add_argument("--large-repeats", type=int, default=1)
    parser.add_argument("--convert", action="store_true", help="also quantkit convert vs the peer converter")
    parser.add_argument("--inspect", action="store_true", help="also quantkit inspect on a 7B-shaped GGUF")
    parser.add_argument("--work", default="/tmp/quantkit-bench-e2e", help="folder for the models and outputs")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    smollm2 = smollm2_bf16(work)
    if not args.skip_smollm2:
        compare_presets("SmolLM2-135M-Instruct, BF16 GGUF", smollm2, work, args.presets.split(","), args.repeats,
                        args.threads)
    if args.large_gb:
        path, label = large_bf16(work, args.large_gb)
        compare_presets(label, path, work, args.large_presets.split(","), args.large_repeats, args.threads)
    if args.convert:
        from quantkit.models import smollm2_hf_dir

        compare_convert(smollm2_hf_dir(), work, args.repeats, args.threads)
    if args.inspect:
        inspect_times(seven_b_gguf(work, smollm2), max(args.repeats, 5))


if __name__ == "__main__":
    main()
