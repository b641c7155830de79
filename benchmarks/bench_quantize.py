"""Quantize speed: quantkit (Numba) vs llama.cpp's C (ggml_quantize_chunk) vs gguf-py's numpy.

For each type: MB/s of float32 input on a Gaussian tensor (default 4096x4096; --shapes 512x4096,4096x4096
runs one table per shape), single-threaded and on all threads (--single-thread: only one thread), median of --repeats runs, and the ratio to C measured in the same run. Single-thread
runs are timed in process CPU time (robust on a shared machine: both run on the calling thread);
all-thread runs in wall time. llama.cpp's
C runs multi-threaded the way llama-quantize does: row chunks on a thread pool (ctypes releases the
GIL). Types whose C quantizer is slow (< 100 MB/s) use fewer rows (--slow-rows) to keep runs short;
the table says how many rows each type used.

    python benchmarks/bench_quantize.py [--types Q4_0,Q4_K] [--imatrix] [--repeats 5] [--shapes 512x4096]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's quantkit, and llamacpp_ref

import llamacpp_ref  # noqa: E402
import numba  # noqa: E402
from gguf import GGMLQuantizationType  # noqa: E402
from gguf import quants as gguf_quants  # noqa: E402

from quantkit import quantize  # noqa: E402
from quantkit.types import quant_type, supported_names  # noqa: E402

SLOW_C_TYPES = {"Q2_K", "Q4_K", "Q5_K", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"}


def median_seconds(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()  # warm-up (compilation, page faults)
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return float(np.median(times))


def c_quantize(x, qtype, imatrix, threads):
    if threads == 1:
        return llamacpp_ref.quantize(x, qtype, imatrix)
    chunks = np.array_split(x, threads * 4)
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda c: llamacpp_ref.quantize(c, qtype, imatrix), chunks))


def gguf_numpy_quantize(x, qtype):
    if qtype not in GGMLQuantizationType.__members__:
        raise NotImplementedError(qtype)  # a type the gguf package does not know (Q2_0)
    return gguf_quants.quantize(x, GGMLQuantizationType[qtype])


def bench_shape(args, rows: int, cols: int) -> None:
    """Print one table: every type of --types on a Gaussian (rows, cols) float32 tensor."""
    rng = np.random.default_rng(0)
    full = rng.standard_normal((rows, cols)).astype(np.float32)
    imatrix = (rng.random(cols).astype(np.float32) + 0.01) if args.imatrix else None
    all_threads = min(args.threads, numba.config.NUMBA_NUM_THREADS)

    print(f"# quantize MB/s of float32 input, {rows}x{cols}, median of {args.repeats}, "
          f"imatrix={'yes' if args.imatrix else 'no'}, all threads = {'-' if args.single_thread else all_threads}")
    print("| type | rows | quantkit 1T | C 1T | ratio 1T | quantkit all | C all | ratio all | gguf-py numpy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.types.split(","):
        qt = quant_type(name)
        needs_imatrix = imatrix if imatrix is not None or not qt.requires_imatrix else rng.random(cols).astype(np.float32) + 0.01
        x = full[: args.slow_rows] if name in SLOW_C_TYPES else full
        mb = x.nbytes / 1e6
        ours_1 = median_seconds(lambda: quantize(x, name, needs_imatrix, threads=1), args.repeats, time.process_time)
        c_1 = median_seconds(lambda: c_quantize(x, name, needs_imatrix, 1), args.repeats, time.process_time)
        if args.single_thread:
            all_columns = "- | - | -"
        else:
            ours_n = median_seconds(lambda: quantize(x, name, needs_imatrix, threads=all_threads), args.repeats)
            c_n = median_seconds(lambda: c_quantize(x, name, needs_imatrix, all_threads), args.repeats)
            all_columns = f"{mb / ours_n:.0f} | {mb / c_n:.0f} | {c_n / ours_n:.2f}x"
        try:
            numpy_speed = f"{mb / median_seconds(lambda: gguf_numpy_quantize(x, name), args.repeats):.0f}" if needs_imatrix is None else "-"
        except NotImplementedError:
            numpy_speed = "-"
        print(f"| {name} | {x.shape[0]} | {mb / ours_1:.0f} | {mb / c_1:.0f} | {c_1 / ours_1:.2f}x "
              f"| {all_columns} | {numpy_speed} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default=",".join(t for t in supported_names() if t != "F32"))
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--slow-rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--imatrix", action="store_true", help="quantize with a random positive importance matrix")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shapes", help="comma-separated ROWSxCOLS, one table each (instead of --rows/--cols)")
    parser.add_argument("--single-thread", action="store_true", help="skip the all-thread columns")
    args = parser.parse_args(argv)

    shapes = [tuple(int(d) for d in shape.lower().split("x")) for shape in args.shapes.split(",")] if args.shapes \
        else [(args.rows, args.cols)]
    for rows, cols in shapes:
        bench_shape(args, rows, cols)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
