"""Second moments of every linear layer's inputs, collected one decoder layer at a time (for GPTQ).

:class:`LayerHessians` runs the Hugging Face model (torch, ``trust_remote_code=False``) over
calibration chunks as GPTQ implementations do: the inputs of the first decoder layer are captured
for every chunk, then each layer is run on its own, its F.linear inputs ``x`` summed into ``x^T x``
per weight matrix (keyed by the GGUF name the converter gives it), and its outputs kept as the next
layer's inputs. Only one layer's matrices and one set of hidden states are in memory at a time.
With ``types`` (GGUF name -> type), each layer's weights are first quantized with error feedback
and dequantized in place, so later layers see the quantized model's activations (sequential GPTQ).

The built-in calibration text is split: its first half is held out (the scorecard measures KLD on
its first tokens), :func:`calibration_text` gives the second half for calibration.
torch and transformers (the ``[eval]`` extra) are imported inside the functions that use them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save
from tqdm import tqdm

from ..errors import HessianError, QuantkitError
from ..files import write_atomic
from ..quants import dequantize, quantize
from ..sources.archs import arch_for
from ..sources.hf import HFSource, load_pretrained
from ..types import quant_type
from .imatrix import _gguf_names, _quiet_transformers, tokenize_chunks

DEFAULT_CALIBRATION = Path(__file__).resolve().parent.parent / "eval" / "data" / "calibration.txt"
_LAYER = re.compile(r"blk\.(\d+)\.")


def calibration_text(text: str | None = None) -> str:
    """``text``, or for None the held-in half of the built-in calibration text (from the first line
    break after its middle); its first half is kept for evaluation (see docs/optimize.md)."""
    if text is not None:
        return text
    full = DEFAULT_CALIBRATION.read_text(encoding="utf-8")
    return full[full.index("\n", len(full) // 2) + 1:]


def read_calibration(path) -> str:
    """A calibration text file's content (UTF-8); a one-line QuantkitError otherwise."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise QuantkitError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise QuantkitError(f"{path}: cannot read the calibration text: {e.strerror or e}") from None


class _Stop(Exception):
    """Raised by the capture hook once the first decoder layer's inputs are stored."""


class LayerHessians:
    """GGUF tensor name -> (n_cols, n_cols) float64 mean of ``x x^T`` over the calibration tokens.

    Ask :meth:`get` in layer order (the converter's order): asking for layer ``i`` runs layers up to
    ``i`` and drops earlier layers' matrices. ``types``: planned GGUF type per tensor name; given,
    each layer is quantized (error feedback) before its outputs feed the next layer.
    """

    def __init__(self, model_dir, text: str, ctx: int = 512, chunks: int | None = None, types=None,
                 progress: bool = True, threads: int | None = None):
        import torch  # deferred: optional and heavy (the [eval] extra)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir, self.types, self.progress, self.threads = Path(model_dir), types or {}, progress, threads
        self.name_map = arch_for(HFSource(self.model_dir)).name_map
        with _quiet_transformers():
            tokenizer = load_pretrained(AutoTokenizer.from_pretrained, self.model_dir, "tokenizer",
                                        local_files_only=True)
            self.token_chunks = tokenize_chunks(tokenizer, text, ctx, chunks)
            self.model = load_pretrained(AutoModelForCausalLM.from_pretrained, self.model_dir, "model",
                                         local_files_only=True, dtype=torch.float32).eval()
        self.layers_name, self.layers = self._decoder_layers()
        self.inputs = self._first_inputs()  # per chunk: (args, kwargs) of the next layer to run
        self.next_layer = 0
        self.current = -1
        self.hessians: dict[str, np.ndarray] = {}

    def _decoder_layers(self):
        import torch

        n_layers = getattr(self.model.config, "num_hidden_layers", None)
        for name, module in self.model.named_modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
                return name, module
        raise QuantkitError(f"{self.model_dir}: no list of {n_layers} decoder layers found in the model")

    def _first_inputs(self) -> list:
        import torch

        captured = []

        def hook(module, args, kwargs):
            captured.append((args, kwargs))
            raise _Stop

        handle = self.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.inference_mode():
                for chunk in self.token_chunks:
                    try:
                        self.model(input_ids=torch.tensor([chunk]), use_cache=False)
                    except _Stop:
                        pass
        finally:
            handle.remove()
        return captured

    def get(self, name: str) -> np.ndarray | None:
        """The matrix for GGUF tensor ``name``, or None (not a decoder-layer linear weight)."""
        match = _LAYER.match(name)
        if match is None or int(match.group(1)) >= len(self.layers):
            return None
        layer = int(match.group(1))
        if layer < self.current:
            raise QuantkitError(f"{name}: hessians are streamed in layer order; layer {self.current} is past")
        while self.current < layer:
            self._advance()
        return self.hessians.get(name)

    def all(self):
        """(GGUF name, matrix) for every decoder layer in order."""
        while self.next_layer < len(self.layers):
            self._advance()
            yield from sorted(self.hessians.items())

    def _layer_weights(self, i: int) -> dict:
        """GGUF name -> the torch weight (2-D) of decoder layer ``i`` it is made from."""
        found = {}
        for local, param in self.layers[i].named_parameters():
            names = _gguf_names(self.name_map, f"{self.layers_name}.{i}.{local}")
            if param.ndim == 2 and len(names) == 1 and names[0].startswith(f"blk.{i}."):
                found[names[0]] = param
        return found

    def _advance(self) -> None:
        """Run layer ``next_layer`` on the stored inputs: its matrices, then (quantized) its outputs."""
        import torch
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        i = self.next_layer
        weights = self._layer_weights(i)
        by_ptr = {w.data_ptr(): name for name, w in weights.items()}
        sums = {name: torch.zeros((w.shape[1], w.shape[1]), dtype=torch.float64) for name, w in weights.items()}
        counts = dict.fromkeys(weights, 0)
        last = [None, None]  # the last input and its x^T x: q, k and v (gate and up) share their input

        class Recorder(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is F.linear:
                    w = args[1] if len(args) > 1 else kwargs["weight"]
                    name = by_ptr.get(w.data_ptr())
                    if name is not None:
                        x = args[0] if args else kwargs["input"]
                        if last[0] is not x:
                            flat = x.detach().reshape(-1, x.shape[-1]).float()
                            last[:] = [x, (flat.T @ flat).double()]  # float32 product per chunk, float64 sum
                        sums[name] += last[1]
                        counts[name] += x.numel() // x.shape[-1]
                return func(*args, **kwargs)

        layer = self.layers[i]
        with torch.inference_mode():
            with Recorder():
                for args, kwargs in tqdm(self.inputs, desc=f"layer {i} inputs", disable=not self.progress,
                                         leave=False):
                    layer(*args, **kwargs)
            last[:] = [None, None]
            self.hessians = {name: (sums[name] / counts[name]).numpy() for name in weights if counts[name]}
            self._quantize_in_place(weights)
            outputs = []
            for args, kwargs in self.inputs:
                out = layer(*args, **kwargs)
                out = out[0] if isinstance(out, (tuple, list)) else out
                if args:
                    outputs.append(((out, *args[1:]), kwargs))
                else:
                    outputs.append(((), {**kwargs, "hidden_states": out}))
            self.inputs = outputs
        self.current, self.next_layer = i, i + 1

    def _quantize_in_place(self, weights: dict) -> None:
        """Replace the layer's weights that have a planned block type by their error-feedback quantization."""
        import torch

        for name, param in weights.items():
            qtype = self.types.get(name)
            if qtype is None or name not in self.hessians or quant_type(qtype).family == "floats":
                continue
            values = param.detach().float().numpy()
            q = quantize(values, qtype, optimize=True, hessian=self.hessians[name], threads=self.threads, name=name)
            param.data.copy_(torch.from_numpy(dequantize(q)))


def collect_hessians(model_dir, text: str, ctx: int = 512, chunks: int | None = None, progress: bool = True):
    """Every decoder-layer weight's input second moments: GGUF name -> float32 (n_cols, n_cols) mean x x^T."""
    hessians = LayerHessians(model_dir, text, ctx, chunks, progress=progress)
    return {name: h.astype(np.float32) for name, h in hessians.all()}


def save_hessians(path, hessians: dict) -> None:
    """Write ``hessians`` as safetensors (one float32 matrix per GGUF tensor name), atomically."""
    write_atomic(path, save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in hessians.items()},
                            metadata={"format": "quantkit-hessians", "statistic": "mean x x^T"}))


class HessianFile:
    """A safetensors file of second moments (:func:`save_hessians`), read one matrix at a time."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._file = safe_open(str(self.path), framework="np")
            self.names = set(self._file.keys())
        except Exception as e:  # safetensors raises its own error kinds for a bad or missing file
            raise HessianError(f"{self.path}: not a safetensors hessian file ({str(e).splitlines()[0][:100]})") from None

    def get(self, name: str) -> np.ndarray | None:
        return self._file.get_tensor(name) if name in self.names else None

    def check(self, tensors) -> None:
        """HessianError unless some of ``tensors`` ((GGUF name, numpy shape) pairs) have a matrix here,
        each (n_cols, n_cols) for its tensor."""
        found = [(name, shape) for name, shape in tensors if name in self.names]
        if not found:
            raise HessianError(f"{self.path}: has no matrix for any tensor to quantize (GGUF names expected)")
        for name, shape in found:
            stored = tuple(self._file.get_slice(name).get_shape())
            if len(shape) != 2 or stored != (shape[-1], shape[-1]):
                raise HessianError(f"{self.path}: {name}: hessian has shape {stored}, the tensor has shape "
                                   f"{tuple(shape)} (needs ({shape[-1]}, {shape[-1]}))")
