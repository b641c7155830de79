"""BERT encoders (BertModel, sentence-transformers models such as all-MiniLM-L6-v2) -> llama.cpp's ``bert``.

As llama.cpp's converter: non-causal attention, the pooling of the sentence-transformers folder
(``modules.json`` -> ``1_Pooling/config.json``), WordPiece vocabulary in phantom-space form, and no
pooler or masked-LM head tensors (llama.cpp computes embeddings only).
"""

from __future__ import annotations

import gguf

from ..hf import SourceError, read_json
from ..vocab import set_wordpiece_vocab
from . import Arch, kinds

_POOLING = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
    "pooling_mode_lasttoken": gguf.PoolingType.LAST,
}
_SKIPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


class BertArch(Arch):
    architectures = ("BertModel",)
    model_arch = gguf.MODEL_ARCH.BERT
    required_tensors = kinds("TOKEN_EMBD", "POS_EMBD", "TOKEN_EMBD_NORM")
    required_biases = kinds("TOKEN_EMBD_NORM")
    required_block_tensors = kinds(
        "ATTN_Q", "ATTN_K", "ATTN_V", "ATTN_OUT", "ATTN_OUT_NORM", "FFN_UP", "FFN_DOWN", "LAYER_OUT_NORM"
    )
    required_block_biases = kinds("ATTN_OUT_NORM", "LAYER_OUT_NORM")

    def set_parameters(self, w) -> None:
        super().set_parameters(w)
        w.add_causal_attention(False)
        pooling = self.pooling_type()
        if pooling is not None:
            w.add_pooling_type(pooling)

    def pooling_type(self):
        """The sentence-transformers pooling of the folder, or None when it has no Pooling module."""
        modules_file = self.source.folder / "modules.json"
        if not modules_file.is_file():
            return None
        modules = read_json(modules_file, list)
        folder = next((m.get("path") for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling")),
                      None)
        if folder is None:
            return None
        config_file = self.source.folder / folder / "config.json"
        pooling = read_json(config_file)
        for key, kind in _POOLING.items():
            if pooling.get(key):
                return kind
        raise SourceError(f"{config_file}: pooling mode not supported by llama.cpp (mean, cls or last token)")

    def set_vocab(self, w) -> None:
        set_wordpiece_vocab(w, self.source.folder, self.config)

    def rename(self, hf_name: str) -> str | None:
        name = hf_name.removeprefix("bert.")
        if name in _SKIPPED or name.startswith(("cls.predictions", "cls.seq_relationship")):
            return None
        if name.endswith(".gamma"):
            name = name[: -len(".gamma")] + ".weight"
        elif name.endswith(".beta"):
            name = name[: -len(".beta")] + ".bias"
        return super().rename(name)
