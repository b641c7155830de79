"""Collect an importance matrix: run the Hugging Face model over calibration text with torch.

Every F.linear input of a decoder weight matrix is squared and summed per column (per expert for
MoE stacks), with the token count, keyed by the GGUF name quantkit's converter gives the matrix.
The result is an :class:`quantkit.plan.imatrix_file.Imatrix`, written as llama.cpp's imatrix GGUF.
torch and transformers (the ``[eval]`` extra) are imported inside the functions that use them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ImatrixError, QuantkitError
from ..plan.imatrix_file import Imatrix, ImatrixEntry
from ..sources.archs import arch_for
from ..sources.hf import load_pretrained
from ..sources.lora import merged_source

# tokens per forward pass: chunks are batched up to this many (a 512-token chunk: 4 per batch)
BATCH_TOKENS = 2048


@dataclass
class _Target:
    """Where F.linear inputs for one weight (or one expert's slice) are summed."""

    sums: object  # torch float32 (n_mat, n_cols)
    counts: object  # torch int64 (n_mat,)
    expert: int
    shape: tuple


def _gguf_names(name_map, hf_name: str) -> list[str]:
    """GGUF tensor names fed by the HF parameter ``hf_name`` (a fused gate_up expert stack feeds two)."""
    base = hf_name.removesuffix(".weight")
    if base.endswith(".gate_up_proj"):
        stem = base.removesuffix(".gate_up_proj")
        split = [name_map.get_name(f"{stem}.{part}") for part in ("gate_proj", "up_proj")]
        if all(split):
            return [n + ".weight" for n in split]
    name = name_map.get_name(base)
    return [name + ".weight"] if name else []


def _targets(model, name_map, process_output: bool, device):
    """weight data pointer -> _Target for every matrix to record, and GGUF name -> its accumulators.

    Matrices: 2-D Linear weights of the decoder blocks ("blk.*"), ``output.weight`` when
    ``process_output`` (and not tied to the embeddings, as llama-imatrix records it), and 3-D expert
    stacks, one target per expert slice (what the eager experts code passes to F.linear).
    """
    import torch

    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr())
    targets, accumulators = {}, {}
    for hf_name, param in model.named_parameters():
        if param.ndim not in (2, 3):
            continue
        names = _gguf_names(name_map, hf_name)
        keep = [n for n in names if n.startswith("blk.") or (n == "output.weight" and process_output and not tied)]
        if not keep:
            continue
        n_mat = param.shape[0] if param.ndim == 3 else 1
        sums = torch.zeros((n_mat, param.shape[-1]), dtype=torch.float32, device=device)
        counts = torch.zeros(n_mat, dtype=torch.int64, device=device)
        for n in keep:
            accumulators[n] = (sums, counts)
        for e in range(n_mat):
            piece = param[e] if param.ndim == 3 else param
            targets[piece.data_ptr()] = _Target(sums, counts, e, tuple(piece.shape))
    return targets, accumulators


def _recorder(targets):
    """A TorchFunctionMode adding x^2 of every F.linear input whose weight is a target."""
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.linear:
                x = args[0] if args else kwargs["input"]
                w = args[1] if len(args) > 1 else kwargs["weight"]
                target = targets.get(w.data_ptr())
                if target is not None and tuple(w.shape) == target.shape:
                    x = x.detach().reshape(-1, x.shape[-1]).float()
                    target.sums[target.expert] += (x * x).sum(dim=0)
                    target.counts[target.expert] += x.shape[0]
            return func(*args, **kwargs)

    return Recorder()


def tokenize_chunks(tokenizer, text: str, ctx: int, chunks: int | None):
    """The text's tokens cut into ``chunks`` (default: all full) chunks of ``ctx``; list of int lists.

    As llama-imatrix does: the whole text is tokenized once (with the tokenizer's special tokens)
    and, when the tokenizer adds a BOS token, each chunk's first token is replaced by BOS.
    """
    if ctx < 1:
        raise ImatrixError(f"--ctx must be at least 1, got {ctx}")
    if chunks is not None and chunks < 1:
        raise ImatrixError(f"--chunks must be at least 1, got {chunks}")
    tokens = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
    if len(tokens) < ctx:
        raise ImatrixError(f"the calibration text has {len(tokens)} tokens, fewer than one chunk of {ctx} "
                           f"(use a longer text or a smaller --ctx)")
    n_chunks = len(tokens) // ctx if chunks is None else min(chunks, len(tokens) // ctx)
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
    result = []
    for i in range(n_chunks):
        chunk = list(tokens[i * ctx : (i + 1) * ctx])
        if adds_bos:
            chunk[0] = bos
        result.append(chunk)
    return result


def collect_imatrix(model_dir, text: str, ctx: int = 512, chunks: int | None = None, device=None,
                    progress: bool = True, dataset: str | None = None, process_output: bool = False,
                    lora=(), lora_scale: float = 1.0, batch_tokens: int = BATCH_TOKENS) -> Imatrix:
    """Run the Hugging Face causal LM in ``model_dir`` over ``text`` and return its importance matrix.

    ``text`` is cut into chunks of ``ctx`` tokens (at most ``chunks``), each read on its own (no
    cache, nothing shared between chunks); ``max(1, batch_tokens // ctx)`` chunks go through the
    model together as one batch (equal lengths: no padding, no mask). For every weight matrix of the decoder blocks, per expert for MoE stacks, the inputs'
    squared values are summed per column in float32 (on ``device``: CUDA when present, else CPU),
    with the token count, keyed by the GGUF tensor name quantkit's converter gives it (so only
    architectures the converter supports). ``output.weight``
    is recorded only with ``process_output`` (llama-imatrix's ``--process-output``). ``dataset``
    is recorded as the file's dataset name. ``lora``: PEFT adapter folders merged into the weights
    (``lora_scale`` times each) before the model runs, so the matrix is the merged model's.
    """
    model_dir = Path(model_dir)
    source = merged_source(model_dir, lora, lora_scale)  # adapters checked against the base before the model loads
    name_map = arch_for(source).name_map  # the names the converter gives the tensors
    with _quiet_transformers():
        return _collect(model_dir, source, name_map, text, ctx, chunks, device, progress, dataset, process_output,
                        max(1, batch_tokens // ctx))


@contextmanager
def _quiet_transformers():
    """transformers' logging at errors only and its progress bars off, restored on exit."""
    from transformers.utils import logging as hf_logging  # deferred: optional and heavy (the [eval] extra)

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _collect(model_dir: Path, source, name_map, text, ctx, chunks, device, progress, dataset,
             process_output, batch_size: int) -> Imatrix:
    import torch  # deferred: optional and heavy (the [eval] extra)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model_dir, "tokenizer", local_files_only=True)
    token_chunks = tokenize_chunks(tokenizer, text, ctx, chunks)

    dtype = torch.float32 if device.type == "cpu" else "auto"
    model = load_pretrained(AutoModelForCausalLM.from_pretrained, model_dir, "model", local_files_only=True,
                            dtype=dtype, experts_implementation="eager").to(device).eval()
    if hasattr(source, "merge"):  # LoRA adapters: the merged model's matrix
        with torch.no_grad():
            source.merge.merge_into(dict(model.named_parameters()))
    targets, accumulators = _targets(model, name_map, process_output, device)
    if not accumulators:
        raise QuantkitError(f"{model_dir}: no weight matrix of the model maps to a GGUF tensor name")

    # Only the logits of the last token are needed unless output.weight's inputs are recorded.
    keep = {} if process_output else {"logits_to_keep": 1}
    with torch.inference_mode(), _recorder(targets), tqdm(
        total=len(token_chunks) * ctx, unit="tok", unit_scale=True, disable=not progress, desc="imatrix"
    ) as bar:
        for first in range(0, len(token_chunks), batch_size):
            batch = token_chunks[first:first + batch_size]
            model(input_ids=torch.tensor(batch, device=device), use_cache=False, **keep)
            bar.update(ctx * len(batch))

    # a matrix the forward pass never multiplied by (e.g. used by an op other than F.linear) has no entry
    entries = {
        name: ImatrixEntry(sums.cpu().numpy().astype(np.float32), counts.cpu().numpy().astype(np.int64))
        for name, (sums, counts) in sorted(accumulators.items()) if int(counts.sum()) > 0
    }
    if not entries:
        raise QuantkitError(f"{model_dir}: the forward pass multiplied no weight matrix through F.linear")
    return Imatrix(entries, [dataset] if dataset else [], len(token_chunks), ctx, str(dataset or model_dir))
