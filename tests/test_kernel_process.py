"""The CLI's set-up of a kernel process, and the BF16/F16 widening pass."""

import subprocess
import sys

import numpy as np

from quantkit import dequantize
from quantkit.quants import QuantizedTensor


def test_prepare_kernel_process_skips_the_blas_probe_and_keeps_scipy_importable():
    code = (
        "import os, sys\n"
        "os.environ.pop('OMP_WAIT_POLICY', None)\n"
        "from quantkit.quants import prepare_kernel_process, quantize\n"
        "prepare_kernel_process()\n"
        "import numba.np.arraymath as am\n"
        "print(os.environ['OMP_WAIT_POLICY'], am._HAVE_BLAS, 'scipy.linalg' in sys.modules)\n"
        "import scipy.linalg.cython_blas\n"
        "print(quantize([[0.5] * 31 + [-1.0]], 'Q8_0').data[:4].tolist())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # Q8_0 block: d = 1/127 as fp16 (0x2008), then round(0.5 * 127) = 64
    assert done.stdout.split("\n")[:2] == ["passive False False", "[8, 32, 64, 64]"]


def test_bf16_and_f16_widen_every_bit_pattern_exactly():
    bits = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    bf16 = dequantize(QuantizedTensor("BF16", bits.shape, bits.view(np.uint8)))
    np.testing.assert_array_equal(bf16.view(np.uint32), bits.astype(np.uint32) << 16)
    f16 = dequantize(QuantizedTensor("F16", bits.shape, bits.view(np.uint8)))
    expected = bits.view(np.float16).astype(np.float32)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(f16.view(np.uint32)[finite], expected.view(np.uint32)[finite])
    np.testing.assert_array_equal(np.isnan(f16), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(f16), np.isinf(expected))


def test_quantizedtensor_input_is_requantized_as_its_values():
    """quantize() of a QuantizedTensor (BF16 rows: the widening kernel for legacy types; others widened
    first) gives the bytes of quantizing its dequantized float32 values."""
    from quantkit import quantize

    x = np.random.default_rng(6).standard_normal((40, 512)).astype(np.float32)
    stored = quantize(x, "BF16")
    q8 = quantize(x, "Q8_0")
    widened = dequantize(stored)
    for qtype in ("Q8_0", "Q4_1", "Q6_K"):
        assert np.array_equal(quantize(stored, qtype).data, quantize(widened, qtype).data), qtype
    assert np.array_equal(quantize(q8, "Q4_0").data, quantize(dequantize(q8), "Q4_0").data)
