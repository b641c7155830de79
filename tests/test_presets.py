"""llama-quantize's presets: quantkit's per-tensor types equal llama.cpp's, and so do the files.

The reference is llama.cpp's own ``llama_model_quantize`` (llama-cpp-python 0.3.36, which compiles
the llama.cpp whose src/llama-quant.cpp presets.py follows), run in a child process:
* with ``dry_run`` it logs each tensor's chosen type without quantizing (fast: every preset on
  SmolLM2 and on small synthetic MoE / 70B / Falcon / Qwen2 files whose data is never read);
* for real, its output file is compared with quantkit's byte for byte (SmolLM2 Q4_K_M, SmolLM2 Q4_0 with
  an imatrix file through the CLI, a small random MoE, and every preset on a small random Llama).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType

import llamacpp_ref as ref
from quantkit import read_gguf, write_gguf
from quantkit.plan.presets import PRESETS, file_type, plan_types, resolve_preset
from quantkit.errors import ImatrixError, QuantkitError, ShapeError, UnsupportedTypeError
from quantkit.ggufio import typed
from quantkit.jobs.quantize import requantize
from quantkit.types import known_type

LLAMA_QUANTIZE = r"""
import ctypes, json, re, sys
import numpy as np
import llama_cpp

jobs = json.load(sys.stdin)
log = []

@llama_cpp.llama_log_callback
def collect(level, text, user_data):
    log.append(text.decode("utf-8", "replace"))

llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
llama_cpp.llama_backend_init()
LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =[^\n(]*(?:\((\w+)\))?")
results = []
for job in jobs:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = job["ftype"]
    params.nthread = 2
    params.dry_run = job["dst"] is None
    params.pure = job.get("pure", False)
    params.output_tensor_type = job.get("output_type", params.output_tensor_type)
    params.token_embedding_type = job.get("token_embedding_type", params.token_embedding_type)
    keep = []
    if job.get("overrides"):
        items = (llama_cpp.llama_model_tensor_override * (len(job["overrides"]) + 1))()
        for i, (pattern, qtype) in enumerate(job["overrides"]):
            items[i].pattern = pattern.encode()
            items[i].type = qtype
        params.tt_overrides = ctypes.cast(items, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(items)
    if job["imatrix"]:
        entries = np.load(job["imatrix"])
        items = (llama_cpp.llama_model_imatrix_data * (len(entries.files) + 1))()
        for i, name in enumerate(entries.files):
            values = np.ascontiguousarray(entries[name], dtype=np.float32).ravel()
            keep.append(values)
            items[i].name = name.encode()
            items[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            items[i].size = values.size
        params.imatrix = ctypes.cast(items, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(items)
    if job.get("kv"):
        items = (llama_cpp.llama_model_kv_override * (len(job["kv"]) + 1))()
        for i, (key, value) in enumerate(job["kv"]):
            items[i].key = key.encode()
            if isinstance(value, str):
                items[i].tag, items[i].value.val_str = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()
            else:
                items[i].tag, items[i].value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, value
        params.kv_overrides = ctypes.cast(items, ctypes.POINTER(llama_cpp.llama_model_kv_override))
        keep.append(items)
    log.clear()
    rc = llama_cpp.llama_model_quantize(job["src"].encode(), (job["dst"] or job["src"] + ".unused").encode(),
                                        ctypes.byref(params))
    text = "".join(log)
    types = {m.group(1): (m.group(3) or m.group(2)).upper() for m in LINE.finditer(text)}
    results.append({"rc": rc, "types": types, "needs_imatrix": "will require an imatrix" in text,
                    "error": [line for line in text.splitlines() if "failed to quantize" in line]})
print("RESULT:" + json.dumps(results))
"""


def llama_quantize(jobs: list[dict]) -> list[dict]:
    """Run llama.cpp's llama_model_quantize for each job {src, dst or None (dry run), preset, imatrix .npz or None}
    (optional: overrides [(pattern, type name)], pure, output_type, token_embedding_type, kv [(key, str or int)]).

    Returns per job: rc, types (tensor name -> type name llama.cpp chose), needs_imatrix (dry run's warning).
    """
    payload = [{"src": str(j["src"]), "dst": None if j["dst"] is None else str(j["dst"]),
                "ftype": int(file_type(j["preset"])), "imatrix": j["imatrix"] and str(j["imatrix"]),
                "overrides": [(p, int(known_type(t).ggml)) for p, t in j.get("overrides", ())],
                "pure": j.get("pure", False), "kv": j.get("kv", []),
                **{k: int(known_type(j[k]).ggml) for k in ("output_type", "token_embedding_type") if k in j}}
               for j in jobs]
    result = subprocess.run([sys.executable, "-c", LLAMA_QUANTIZE], input=json.dumps(payload), capture_output=True,
                            text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT:")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[0][len("RESULT:"):])


def synthetic_imatrix(path, tensors, seed=0):
    """A positive importance matrix for every weight llama-imatrix would see (all 2-D+ weights but token_embd).

    Saved to ``path`` (.npz, flattened for llama.cpp); returned as name -> (n_cols,) or (n_expert, n_cols).
    """
    rng = np.random.default_rng(seed)
    entries = {}
    for name, shape in tensors:
        if len(shape) >= 2 and name.endswith(".weight") and name != "token_embd.weight" and "norm" not in name:
            rows = (shape[-3],) if len(shape) >= 3 else ()
            entries[name] = np.exp(rng.normal(size=rows + (shape[-1],))).astype(np.float32)
    np.savez(path, **entries)
    return entries


# --- SmolLM2-135M: F16 source, every preset -------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_f16(smollm2_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("presets") / "smollm2.F16.gguf"
    requantize(smollm2_path, out, "F16", progress=False)
    return out


@pytest.fixture(scope="module")
def smollm2_f16_info(smollm2_f16):
    with read_gguf(smollm2_f16) as f:
        return f.metadata.copy(), [(t.name, t.shape, t.qtype) for t in f.tensors]


@pytest.fixture(scope="module")
def smollm2_imatrix(smollm2_f16_info, tmp_path_factory):
    path = tmp_path_factory.mktemp("imatrix") / "smollm2.imatrix.npz"
    return path, synthetic_imatrix(path, [(n, s) for n, s, _ in smollm2_f16_info[1]])


@pytest.fixture(scope="module")
def smollm2_llama_plans(smollm2_f16, smollm2_imatrix):
    """llama.cpp's dry-run choice for every preset, without and with an importance matrix."""
    jobs = [{"src": smollm2_f16, "dst": None, "preset": p, "imatrix": im}
            for im in (None, smollm2_imatrix[0]) for p in PRESETS]
    results = llama_quantize(jobs)
    return {(j["preset"], j["imatrix"] is not None): r for j, r in zip(jobs, results)}


def assert_same_plan(ours: dict, theirs: dict, label: str):
    assert set(ours) == set(theirs), label
    diff = {n: (ours[n].name, theirs[n]) for n in ours if ours[n].name != theirs[n]}
    assert not diff, f"{label}: {len(diff)} tensors differ (ours, llama.cpp): {dict(list(diff.items())[:8])}"


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["no-imatrix", "imatrix"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_smollm2_types_equal_llama_quantize(preset, with_imatrix, smollm2_f16_info, smollm2_imatrix,
                                            smollm2_llama_plans):
    metadata, tensors = smollm2_f16_info
    theirs = smollm2_llama_plans[(preset, with_imatrix)]
    assert len(theirs["types"]) == 272
    imatrix = smollm2_imatrix[1] if with_imatrix else None
    if theirs["needs_imatrix"]:
        with pytest.raises(ImatrixError, match="importance matrix"):
            plan_types(preset, metadata, tensors, imatrix=imatrix)
        return
    assert_same_plan(plan_types(preset, metadata, tensors, imatrix=imatrix), theirs["types"], preset)


def test_smollm2_plans_exercise_the_rules(smollm2_llama_plans):
    """The comparison above is not trivial: SmolLM2's presets mix many types (576-wide rows fall back)."""
    q4_k_m = smollm2_llama_plans[("Q4_K_M", False)]["types"]
    counts = {t: list(q4_k_m.values()).count(t) for t in set(q4_k_m.values())}
    assert counts == {"F32": 61, "Q8_0": 15, "Q6_K": 14, "Q5_0": 166, "Q4_K": 16}
    refused = sorted(p for (p, im), r in smollm2_llama_plans.items() if not im and r["needs_imatrix"])
    assert refused == ["IQ1_M", "IQ1_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "Q2_K_S"]
    # an imatrix changes choices: Q4_0's first ffn_down layers become Q4_1, IQ3_XXS's attn_v stays IQ3_XXS
    q4_0 = smollm2_llama_plans[("Q4_0", True)]["types"]
    assert q4_0["blk.0.ffn_down.weight"] == "Q4_1" and q4_0["blk.4.ffn_down.weight"] == "Q4_0"
    assert smollm2_llama_plans[("Q4_0", False)]["types"]["blk.0.ffn_down.weight"] == "Q4_0"


# --- synthetic models: the MoE, 70B, Falcon and untied-output rules ----------------------------------------

def _model(arch, n_layer, layer_tensors, head=(8, 2), extra=(), top=("token_embd.weight", "output.weight"), cols=256,
           n_expert=0):
    """A GGUF whose metadata llama.cpp accepts and whose weights are tiny (a dry run never reads them)."""
    metadata = {
        "general.architecture": arch,
        f"{arch}.block_count": typed(n_layer, GGUFValueType.UINT32),
        f"{arch}.context_length": typed(2048, GGUFValueType.UINT32),
        f"{arch}.embedding_length": typed(cols, GGUFValueType.UINT32),
        f"{arch}.feed_forward_length": typed(4 * cols, GGUFValueType.UINT32),
        f"{arch}.attention.head_count": typed(head[0], GGUFValueType.UINT32),
        f"{arch}.attention.head_count_kv": typed(head[1], GGUFValueType.UINT32),
        f"{arch}.attention.layer_norm_rms_epsilon": typed(1e-5, GGUFValueType.FLOAT32),
        f"{arch}.attention.layer_norm_epsilon": typed(1e-5, GGUFValueType.FLOAT32),
        f"{arch}.rope.dimension_count": typed(cols // head[0], GGUFValueType.UINT32),
        **dict(extra),
    }
    if n_expert:
        metadata[f"{arch}.expert_count"] = typed(n_expert, GGUFValueType.UINT32)
        metadata[f"{arch}.expert_used_count"] = typed(2, GGUFValueType.UINT32)
    shapes = {name: (4, cols) for name in top}
    shapes["output_norm.weight"] = (cols,)
    for i in range(n_layer):
        for name, shape in layer_tensors.items():
            shapes[f"blk.{i}.{name}"] = shape
    return metadata, shapes


class _Tensor:
    """A tensor for write_gguf: F32 when 1-D, else F16; zeros, or Gaussian values from ``rng``."""

    def __init__(self, name, shape, rng=None):
        self.name, self.shape = name, shape
        self.qtype = GGMLQuantizationType.F32 if len(shape) == 1 else GGMLQuantizationType.F16
        dtype = np.float32 if len(shape) == 1 else np.float16
        values = np.zeros(shape, dtype) if rng is None else rng.normal(size=shape).astype(dtype)
        self.data = values.reshape(-1).view(np.uint8)


def _dense(cols=256, ff=1024):
    return {"attn_norm.weight": (cols,), "attn_q.weight": (4, cols), "attn_k.weight": (4, cols),
            "attn_v.weight": (4, cols), "attn_output.weight": (4, cols), "ffn_norm.weight": (cols,),
            "ffn_gate.weight": (4, cols), "ffn_up.weight": (4, cols), "ffn_down.weight": (4, ff)}


def _moe(n_expert, cols=256, ff=512, shared=False):
    layer = {k: v for k, v in _dense(cols).items() if not k.startswith(("ffn_gate.", "ffn_up.", "ffn_down."))}
    layer.update({"ffn_gate_inp.weight": (n_expert, cols), "ffn_gate_exps.weight": (n_expert, 4, cols),
                  "ffn_up_exps.weight": (n_expert, 4, cols), "ffn_down_exps.weight": (n_expert, 4, ff)})
    if shared:
        layer.update({"ffn_gate_inp_shexp.weight": (cols,), "ffn_gate_shexp.weight": (4, cols),
                      "ffn_up_shexp.weight": (4, cols), "ffn_down_shexp.weight": (4, ff)})
    return layer


SYNTHETIC = {
    # Mixtral-like: 8 experts (attn_v/attn_k -> Q8_0, attn_output Q5_K, ...), layers parsed from names
    "mixtral": lambda: _model("llama", 32, _moe(8), n_expert=8),
    # Llama-70B-like: 80 layers with GQA 8 (attn_v Q3_K/Q4_K -> Q5_K), untied output
    "llama70b": lambda: _model("llama", 80, _dense(), head=(8, 1)),
    # Falcon: attn_qkv, output always Q8_0, its own ffn_down and attn_output rules; tied embeddings
    "falcon": lambda: _model("falcon", 32, {"attn_norm.weight": (256,), "attn_norm.bias": (256,),
                                            "attn_qkv.weight": (4, 256), "attn_output.weight": (4, 256),
                                            "ffn_up.weight": (4, 256), "ffn_down.weight": (4, 1024)},
                             head=(8, 8), top=("token_embd.weight",)),
    # Qwen2-MoE-like: 60 experts plus a shared expert, GQA 1, untied output
    "qwen2moe": lambda: _model("qwen2moe", 24, _moe(60, shared=True), head=(8, 8), n_expert=60,
                               extra={"qwen2moe.expert_feed_forward_length": typed(512, GGUFValueType.UINT32),
                                      "qwen2moe.expert_shared_feed_forward_length": typed(512, GGUFValueType.UINT32)}),
    # Qwen2-0.5B-like: 24 layers, 896-wide rows (not a multiple of 256), 4864-wide ffn_down, untied output
    "qwen2": lambda: _model("qwen2", 24, _dense(896, 4864), head=(14, 2), cols=896),
}


@pytest.fixture(scope="module")
def synthetic_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    models = {}
    for label, make in SYNTHETIC.items():
        metadata, shapes = make()
        path = folder / f"{label}.gguf"
        write_gguf(path, metadata, [_Tensor(n, s) for n, s in shapes.items()])
        imatrix_path = folder / f"{label}.imatrix.npz"
        imatrix = synthetic_imatrix(imatrix_path, list(shapes.items()))
        models[label] = (path, imatrix_path, imatrix)
    return models


@pytest.fixture(scope="module")
def synthetic_llama_plans(synthetic_models):
    jobs = [{"src": path, "dst": None, "preset": p, "imatrix": im, "label": label}
            for label, (path, im_path, _) in synthetic_models.items() for im in (None, im_path) for p in PRESETS]
    results = llama_quantize(jobs)
    return {(j["label"], j["preset"], j["imatrix"] is not None): r for j, r in zip(jobs, results)}


@pytest.mark.parametrize("label", list(SYNTHETIC))
def test_synthetic_models_types_equal_llama_quantize(label, synthetic_models, synthetic_llama_plans):
    path, _, imatrix = synthetic_models[label]
    with read_gguf(path) as f:
        metadata, tensors = f.metadata.copy(), [(t.name, t.shape, t.qtype) for t in f.tensors]
    checked = 0
    for preset in PRESETS:
        for with_imatrix in (False, True):
            theirs = synthetic_llama_plans[(label, preset, with_imatrix)]
            assert len(theirs["types"]) == len(tensors), (preset, theirs["error"])
            given = imatrix if with_imatrix else None
            if theirs["needs_imatrix"]:
                with pytest.raises(ImatrixError):
                    plan_types(preset, metadata, tensors, imatrix=given)
            else:
                assert_same_plan(plan_types(preset, metadata, tensors, imatrix=given), theirs["types"],
                                 f"{label} {preset} imatrix={with_imatrix}")
                checked += 1
    assert checked >= 40
    typed_metadata, shapes = SYNTHETIC[label]()  # metadata as written (typed values)
    assert_same_plan(plan_types("Q4_K_M", typed_metadata, tensors),
                     synthetic_llama_plans[(label, "Q4_K_M", False)]["types"], f"{label} typed metadata")


def test_synthetic_models_exercise_the_rules(synthetic_llama_plans):
    mixtral = synthetic_llama_plans[("mixtral", "Q4_K_M", False)]["types"]
    assert mixtral["blk.5.attn_v.weight"] == "Q8_0" and mixtral["blk.5.attn_k.weight"] == "Q8_0"
    assert mixtral["blk.5.attn_output.weight"] == "Q5_K" and mixtral["blk.5.ffn_gate_inp.weight"] == "F16"
    assert mixtral["blk.0.ffn_down_exps.weight"] == "Q6_K" and mixtral["blk.5.ffn_down_exps.weight"] == "Q4_K"
    mxfp4_moe = synthetic_llama_plans[("qwen2moe", "MXFP4_MOE", False)]["types"]  # experts MXFP4, the rest Q8_0
    assert {mxfp4_moe[f"blk.3.ffn_{p}_exps.weight"] for p in ("gate", "up", "down")} == {"MXFP4"}
    assert mxfp4_moe["blk.3.ffn_down_shexp.weight"] == mxfp4_moe["blk.3.attn_q.weight"] == "Q8_0"
    assert mxfp4_moe["output.weight"] == mxfp4_moe["token_embd.weight"] == "Q8_0"
    assert mxfp4_moe["blk.3.ffn_gate_inp.weight"] == "F16"
    llama70b = synthetic_llama_plans[("llama70b", "Q3_K_S", False)]["types"]
    assert llama70b["blk.40.attn_v.weight"] == "Q5_K" and llama70b["output.weight"] == "Q6_K"
    falcon = synthetic_llama_plans[("falcon", "Q3_K_L", False)]["types"]
    assert falcon["token_embd.weight"] == "Q8_0" and falcon["blk.3.attn_output.weight"] == "Q4_K"
    qwen2 = synthetic_llama_plans[("qwen2", "Q4_K_M", False)]["types"]
    assert qwen2["blk.0.ffn_down.weight"] == "Q6_K" and qwen2["blk.4.ffn_down.weight"] == "Q4_K"
    assert qwen2["blk.4.attn_q.weight"] == "Q5_0" and qwen2["output.weight"] == "Q8_0"


# --- real quantization: quantkit's file equals llama-quantize's byte for byte -----------------------------

@pytest.fixture(scope="module")
def q4_k_m_files(smollm2_f16, tmp_path_factory):
    folder = tmp_path_factory.mktemp("q4km")
    ours, theirs = folder / "quantkit.Q4_K_M.gguf", folder / "llama.Q4_K_M.gguf"
    requantize(smollm2_f16, ours, "q4_k_m", progress=False)
    [result] = llama_quantize([{"src": smollm2_f16, "dst": theirs, "preset": "Q4_K_M", "imatrix": None}])
    assert result["rc"] == 0, result["error"]
    return ours, theirs


def test_q4_k_m_file_equals_llama_quantize_byte_for_byte(q4_k_m_files):
    ours, theirs = q4_k_m_files
    with read_gguf(ours) as a, read_gguf(theirs) as b:
        assert [(t.name, t.qtype, t.shape) for t in a.tensors] == [(t.name, t.qtype, t.shape) for t in b.tensors]
        assert list(a.metadata.items()) == list(b.metadata.items())
        for ta, tb in zip(a.tensors, b.tensors):
            np.testing.assert_array_equal(ta.data, tb.data, err_msg=ta.name)
    assert ours.read_bytes() == theirs.read_bytes()


def test_q4_k_m_tensors_equal_ggml_quantize_of_the_source(smollm2_f16, q4_k_m_files):
    ours, _ = q4_k_m_files
    with read_gguf(smollm2_f16) as src, read_gguf(ours) as out:
        source = {t.name: t for t in src.tensors}
        quantized = 0
        for t in out.tensors:
            s = source[t.name]
            if t.qtype == s.qtype:
                np.testing.assert_array_equal(t.data, s.data, err_msg=t.name)
                continue
            np.testing.assert_array_equal(t.data, ref.quantize(s.dequantize(), t.qtype), err_msg=t.name)
            quantized += 1
        assert quantized == 211
        assert out.metadata["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M


def test_llamacpp_generates_from_q4_k_m(q4_k_m_files):
    from test_requantize import llamacpp_answer

    answer = llamacpp_answer(q4_k_m_files[0])
    # 135M parameters quantized twice (Q4_1, then Q4_K_M) answer in words, not always correctly
    # (this file, byte-identical to llama-quantize's, answers "La femme de France, le Grand Croix, est")
    words = answer.split()
    assert len(words) >= 4 and sum(c.isalpha() or c.isspace() for c in answer) >= 0.8 * len(answer), answer


def test_imatrix_preset_file_equals_llama_quantize(smollm2_f16, smollm2_imatrix, tmp_path):
    """Q4_0 with an importance matrix: weighted searches, and the imatrix-only rule (first ffn_down layers Q4_1).

    (IQ4_XS with this imatrix is byte-identical too, measured once: llama.cpp takes over a minute for it here.)
    """
    from click.testing import CliRunner

    from quantkit.cli import main
    from quantkit.plan.imatrix_file import Imatrix, ImatrixEntry, write_imatrix

    path, imatrix = smollm2_imatrix
    ours, theirs = tmp_path / "quantkit.gguf", tmp_path / "llama.gguf"
    imatrix_file = write_imatrix(tmp_path / "imatrix.gguf", Imatrix(
        {name: ImatrixEntry(values.reshape(1, -1), np.ones(1, np.int64)) for name, values in imatrix.items()}))
    result = CliRunner().invoke(main, ["quantize", str(smollm2_f16), str(ours), "Q4_0", "--imatrix", str(imatrix_file)])
    assert result.exit_code == 0, result.output
    # the keys llama-quantize (the tool) passes as kv overrides when given an imatrix
    kv = [("quantize.imatrix.file", str(imatrix_file)), ("quantize.imatrix.entries_count", len(imatrix))]
    [result] = llama_quantize([{"src": smollm2_f16, "dst": theirs, "preset": "Q4_0", "imatrix": path, "kv": kv}])
    assert result["rc"] == 0, result["error"]
    with read_gguf(ours) as a:
        types = {t.name: t.qtype.name for t in a.tensors}
        assert list(a.metadata.items())[-4:] == [("general.quantization_version", 2), ("general.file_type", 2), *kv]
    assert set(types.values()) == {"F32", "Q8_0", "Q4_0", "Q4_1"} and types["blk.2.ffn_down.weight"] == "Q4_1"
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("preset", ["Q4_K_M", "IQ2_XS", "MXFP4_MOE"])
def test_moe_file_with_imatrix_equals_llama_quantize(preset, tmp_path):
    """A small random MoE (4 experts, 3-D expert tensors): each expert's rows use its own imatrix row."""
    metadata, shapes = _model("llama", 8, _moe(4, ff=256), n_expert=4)
    rng = np.random.default_rng(1)
    source = write_gguf(tmp_path / "moe.gguf", metadata, [_Tensor(n, s, rng) for n, s in shapes.items()])
    imatrix = synthetic_imatrix(tmp_path / "moe.imatrix.npz", list(shapes.items()), seed=2)
    ours, theirs = tmp_path / "quantkit.gguf", tmp_path / "llama.gguf"
    requantize(source, ours, preset, imatrix=imatrix, progress=False)
    [result] = llama_quantize([{"src": source, "dst": theirs, "preset": preset, "imatrix": tmp_path / "moe.imatrix.npz"}])
    assert result["rc"] == 0, result["error"]
    with read_gguf(ours) as f:
        assert len({t.qtype for t in f.tensors}) >= 4
        assert f.tensor("blk.3.ffn_down_exps.weight").shape == (4, 4, 256)
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.fixture(scope="module")
def small_dense_llama_files(tmp_path_factory):
    """A small random Llama (8 layers, 256-wide rows, GQA 4, untied output) and llama-quantize's file for every
    preset, with an importance matrix."""
    folder = tmp_path_factory.mktemp("dense")
    metadata, shapes = _model("llama", 8, _dense(256, 512))
    rng = np.random.default_rng(3)
    source = write_gguf(folder / "dense.gguf", metadata, [_Tensor(n, s, rng) for n, s in shapes.items()])
    imatrix = synthetic_imatrix(folder / "dense.imatrix.npz", list(shapes.items()), seed=4)
    jobs = [{"src": source, "dst": folder / f"llama.{p}.gguf", "preset": p, "imatrix": folder / "dense.imatrix.npz"}
            for p in PRESETS]
    for job, result in zip(jobs, llama_quantize(jobs)):
        assert result["rc"] == 0, (job["preset"], result["error"])
    return source, imatrix, folder


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_file_equals_llama_quantize(preset, small_dense_llama_files):
    source, imatrix, folder = small_dense_llama_files
    ours = folder / f"quantkit.{preset}.gguf"
    requantize(source, ours, preset, imatrix=imatrix, progress=False)
    assert ours.read_bytes() == (folder / f"llama.{preset}.gguf").read_bytes()


# --- rules and errors without llama.cpp -------------------------------------------------------------------

def test_preset_names_and_aliases():
    assert resolve_preset("q4_k_m") == "Q4_K_M" and resolve_preset("Q4_K") == "Q4_K_M"
    with pytest.raises(UnsupportedTypeError, match="unknown preset 'Q7_7'.*Q4_K_M.*TQ2_0"):
        resolve_preset("Q7_7")


OVERRIDE_CASES = {
    # an override skips the rules, so blk.0's attn_v does not count: Q3_K_M's first two Q5_K are blk.1 and blk.2
    "Q3_K_M": [(r"blk\.0\.attn_v", "q8_0"), ("ffn_down", "iq4_nl")],
    "Q4_K_M": [("attn_(q|k)", "Q6_K"), ("token_embd", "Q4_K"), ("ffn_up", "F16")],
    # the newest types (Q1_0 fits only the 1536-wide ffn_down rows)
    "Q8_0": [("ffn_down", "q1_0"), ("attn_(q|k)", "NVFP4"), ("ffn_up", "q2_0"), ("attn_v", "mxfp4")],
}


EXPLICIT_CASES = [  # (model, preset, options)
    ("smollm2", "Q4_K_M", {"output_type": "q6_k"}),  # tied: token_embd takes it through the rules -> Q8_0 fallback
    ("smollm2", "Q3_K_M", {"token_embedding_type": "Q5_0"}),
    ("llama70b", "F16", {"output_type": "Q8_0"}),  # applied even by the float presets
    ("llama70b", "IQ4_XS", {"output_type": "Q5_K", "token_embedding_type": "Q4_0"}),
    ("llama70b", "Q2_K", {"token_embedding_type": "IQ4_NL", "pure": True}),
]


def test_overrides_pure_and_explicit_types_equal_llama_quantize(smollm2_f16, smollm2_f16_info, synthetic_models):
    files = {"smollm2": smollm2_f16, "llama70b": synthetic_models["llama70b"][0]}
    jobs = [{"src": smollm2_f16, "dst": None, "preset": p, "imatrix": None, "overrides": o}
            for p, o in OVERRIDE_CASES.items()]
    jobs += [{"src": smollm2_f16, "dst": None, "preset": p, "imatrix": None, "pure": True} for p in ("Q4_K_M", "IQ4_XS")]
    jobs += [{"src": files[model], "dst": None, "preset": p, "imatrix": None, **options}
             for model, p, options in EXPLICIT_CASES]
    for job, theirs in zip(jobs, llama_quantize(jobs)):
        with read_gguf(job["src"]) as f:
            metadata, tensors = f.metadata.copy(), [(t.name, t.shape, t.qtype) for t in f.tensors]
        options = {k: job[k] for k in ("overrides", "pure", "output_type", "token_embedding_type") if k in job}
        assert_same_plan(plan_types(job["preset"], metadata, tensors, **options), theirs["types"], str(job))
    metadata, tensors = smollm2_f16_info
    q3 = plan_types("Q3_K_M", metadata, tensors, overrides=OVERRIDE_CASES["Q3_K_M"])
    assert [q3[f"blk.{i}.attn_v.weight"].name for i in range(4)] == ["Q8_0", "Q5_1", "Q5_1", "Q5_0"]
    assert q3["blk.7.ffn_down.weight"].name == "IQ4_NL"
    pure = plan_types("Q4_K_M", metadata, tensors, pure=True)
    assert {pure[n].name for n, s, _ in tensors if len(s) == 2} == {"Q4_K", "Q5_0"}  # 1536-wide ffn_down fit Q4_K
    # tied embeddings are not output.weight: the float presets leave them alone
    assert plan_types("F16", metadata, tensors, output_type="Q8_0")["token_embd.weight"].name == "F16"
    with pytest.raises(UnsupportedTypeError):
        plan_types("Q4_K_M", metadata, tensors, overrides=[("attn_v", "Q9_9")])
    with pytest.raises(ShapeError, match="token_embd.weight: rows of 576 do not split into Q4_K blocks of 256"):
        plan_types("Q4_K_M", metadata, tensors, token_embedding_type="Q4_K")


def test_imatrix_errors(smollm2_f16_info, smollm2_imatrix):
    metadata, tensors = smollm2_f16_info
    imatrix = dict(smollm2_imatrix[1])
    with pytest.raises(ImatrixError, match="IQ2_XXS makes blk.3.ffn_down.weight IQ2_XXS.*no importance matrix"):
        plan_types("IQ2_XXS", metadata, tensors)
    del imatrix["blk.3.ffn_down.weight"]
    with pytest.raises(ImatrixError, match="blk.3.ffn_down.weight.*has no entry"):
        plan_types("IQ2_XXS", metadata, tensors, imatrix=imatrix)
    imatrix["blk.3.ffn_down.weight"] = np.ones(100, np.float32)
    with pytest.raises(ImatrixError, match="blk.3.ffn_down.weight: 100 values, the tensor needs 1536"):
        plan_types("Q4_K_M", metadata, tensors, imatrix=imatrix)
    imatrix["blk.3.ffn_down.weight"] = np.full(1536, np.nan, np.float32)
    with pytest.raises(ImatrixError, match="NaN"):
        plan_types("Q4_K_M", metadata, tensors, imatrix=imatrix)
    with pytest.raises(QuantkitError, match="general.architecture"):
        plan_types("Q4_K_M", {}, tensors)


def test_cli_quantize_preset(smollm2_f16, tmp_path):
    from click.testing import CliRunner

    from quantkit.cli import main

    out = tmp_path / "out.gguf"
    result = CliRunner().invoke(main, ["quantize", str(smollm2_f16), str(out), "q8_0", "--tensor-type", "ffn_down=q6_k",
                                       "--token-embedding-type", "q4_0"])
    assert result.exit_code == 0, result.output
    with read_gguf(out) as f:
        types = {t.name: t.qtype.name for t in f.tensors}
    assert types["blk.0.ffn_down.weight"] == "Q6_K" and types["blk.0.ffn_up.weight"] == "Q8_0"
    assert types["token_embd.weight"] == "Q4_0"
    for args, message in [(["Q4_K_Z"], "unknown preset"), (["Q4_K_M", "--tensor-type", "attn_v"], "REGEX=TYPE"),
                          (["IQ1_S"], "needs an importance matrix")]:
        result = CliRunner().invoke(main, ["quantize", str(smollm2_f16), str(tmp_path / "x.gguf"), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
        assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("preset", ["IQ4_XS", "IQ2_XS"])
def test_llamacpp_generates_from_iq_presets(preset, smollm2_f16, smollm2_imatrix, tmp_path):
    """SmolLM2 with IQ4_XS (no imatrix) and IQ2_XS (imatrix) weights loads in llama.cpp and generates."""
    from test_requantize import llamacpp_answer

    out = tmp_path / f"smollm2.{preset}.gguf"
    requantize(smollm2_f16, out, preset, imatrix=smollm2_imatrix[1] if preset == "IQ2_XS" else None, progress=False)
    with read_gguf(out) as f:
        types = {t.qtype.name for t in f.tensors}
    assert preset in types, types
    answer = llamacpp_answer(out)
    if preset == "IQ4_XS":
        assert len(answer.split()) >= 2 and sum(c.isalpha() for c in answer) >= 5, answer
    else:  # 2-bit weights of a 135M model with a synthetic imatrix: llama.cpp runs it, the answer is poor
        assert answer.strip(), answer
