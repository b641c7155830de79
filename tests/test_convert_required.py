"""A checkpoint missing a tensor never becomes a file llama.cpp cannot load.

Must show, per supported architecture (the tiny models of test_convert_archs.py, and a tiny BERT):
dropping the checkpoint tensors behind any GGUF tensor outside the blocks or in block 1 either
fails the conversion with one line naming that GGUF tensor, or gives a file that llama.cpp
loads - it treats the tensor as optional (biases, an untied output.weight).
"""

import shutil
from pathlib import Path

import pytest
from test_convert_archs import MODELS, tiny_model
from test_convert_support import _WORK

import quantkit
from quantkit.jobs.convert import plan_conversion
from quantkit.errors import QuantkitError


def tiny_bert(minilm_dir: Path) -> Path:
    """A 2-layer BertModel (hidden 64) with all-MiniLM-L6-v2's tokenizer and pooling."""
    import torch
    import transformers

    folder = _WORK / "tiny-bert"
    if folder.is_dir():
        return folder
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "modules.json"):
        shutil.copy(minilm_dir / name, folder / name)
    shutil.copytree(minilm_dir / "1_Pooling", folder / "1_Pooling")
    return folder


def without(folder: Path, dropped: set, target: Path) -> Path:
    """A copy of ``folder`` whose model.safetensors lacks the tensors ``dropped``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("model.safetensors"))
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        kept = {name: f.get_tensor(name) for name in f.keys() if name not in dropped}
    save_file(kept, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def llama_cpp_loads(path: Path) -> bool:
    """Whether llama.cpp's model loader (llama-cpp-python 0.3.36, the converter peer's llama.cpp) loads
    the file: every tensor it requires for the architecture is there, with its shape, and no other."""
    import llama_cpp

    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    if not model:
        return False
    llama_cpp.llama_model_free(model)
    return True


@pytest.mark.parametrize("name", sorted(MODELS) + ["bert"])
def test_dropped_tensor_is_named_or_optional_in_llama_cpp(name, smollm2_hf_dir, minilm_dir, tmp_path):
    folder = tiny_bert(minilm_dir) if name == "bert" else tiny_model(name, smollm2_hf_dir)
    plan = plan_conversion(folder, "F32")
    outcomes = {}
    for p in plan.tensors:
        if not p.tensor.parts or (p.name.startswith("blk.") and not p.name.startswith("blk.1.")):
            continue
        broken = without(folder, set(p.tensor.parts), tmp_path / "broken")
        out = tmp_path / "out.gguf"
        try:
            quantkit.convert(broken, out, "F32", progress=False, overwrite=True)
        except QuantkitError as e:
            message = str(e)
            assert "\n" not in message and len(message) <= 200, message
            assert repr(p.name) in message, (p.name, message)
            outcomes[p.name] = "error"
            continue
        assert llama_cpp_loads(out), f"{name}: without {p.name} quantkit wrote a file llama.cpp cannot load"
        outcomes[p.name] = "optional"
    assert "error" in outcomes.values()
    assert outcomes["token_embd.weight"] == "error"
    ffn_down = "blk.1.ffn_down_exps.weight" if name in ("mixtral", "qwen3moe") else "blk.1.ffn_down.weight"
    assert outcomes[ffn_down] == "error"


def test_required_tensors_are_tensors_of_the_gguf_architecture():
    """Each architecture's required kinds are in gguf.MODEL_TENSORS of its GGUF architecture."""
    import importlib

    import gguf

    from quantkit.sources.archs import REGISTRY, Arch

    for module_name in set(REGISTRY.values()):
        module = importlib.import_module(f"quantkit.sources.archs.{module_name}")
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, Arch) and cls.architectures:
                kinds = (cls.required_tensors + cls.required_block_tensors + cls.required_biases
                         + cls.required_block_biases)
                assert cls.required_tensors and cls.required_block_tensors, cls.__name__
                assert set(kinds) <= set(gguf.MODEL_TENSORS[cls.model_arch]), cls.__name__
