"""Error feedback on one synthetic layer: output error ||(W - Q) X|| of quantize(..., hessian=X^T X).

256 x 512 Gaussian weights, 4096 inputs with correlated columns of unequal scale (seed 0). Printed
per type: error with error feedback / default, and / default given diag(X^T X) as its imatrix.

    python benchmarks/bench_calibrate_layer.py [Q4_0 Q5_1 Q2_K Q3_K Q4_K IQ4_XS]
"""

import sys

import numpy as np

from quantkit import dequantize, quantize


def main() -> None:
    rng = np.random.default_rng(0)
    n, tokens, rows = 512, 4096, 256
    mix = rng.normal(size=(n, n)) / np.sqrt(n) + 0.5 * np.eye(n)
    x = (rng.normal(size=(tokens, n)) @ mix) * np.exp(0.5 * rng.normal(size=n))
    w = rng.normal(size=(rows, n)).astype(np.float32)
    h = x.T @ x

    def error(q) -> float:
        return float(np.linalg.norm((w - dequantize(q)).astype(np.float64) @ x.T))

    print("| type | feedback / default | feedback / default with imatrix diag(H) |\n|---|---|---|")
    for qtype in sys.argv[1:] or ["Q4_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "IQ4_XS"]:
        fed_back = error(quantize(w, qtype, optimize=True, hessian=h))
        default = error(quantize(w, qtype))
        weighted = error(quantize(w, qtype, imatrix=np.diag(h).astype(np.float32)))
        print(f"| {qtype} | {fed_back / default:.3f} | {fed_back / weighted:.3f} |", flush=True)


if __name__ == "__main__":
    main()
