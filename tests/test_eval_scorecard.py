"""quantkit scorecard on SmolLM2-135M-Instruct: sanity of the numbers, both backends, report files, errors.

One small run per backend (few prompts, short answers, a short text), shared by the tests through
module fixtures; the llama.cpp run reuses the GGUF files the torch run converted.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from quantkit.cli import main
from quantkit.errors import QuantkitError
from quantkit.eval import Settings, scorecard
from quantkit.eval.report import DEFAULT_PROMPTS, read_prompts
from quantkit.types import quant_type

SETTINGS = Settings(max_new_tokens=20, text_tokens=96)
TYPES = ["F16", "Q8_0", "Q4_K_M", "Q2_K"]
KLD_AGREEMENT = 0.10  # docs/scorecard.md, "The two backends"


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    """12 prompts of the shipped set, every fourth: facts, reasoning, code, instructions, creative."""
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(read_prompts(DEFAULT_PROMPTS)[::4][:12]) + "\n")
    return path


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("scorecard")


@pytest.fixture(scope="module")
def torch_run(smollm2_hf_dir, report_dir, prompts_file):
    return scorecard(smollm2_hf_dir, TYPES, report_dir, prompts=prompts_file, settings=SETTINGS, progress=False, threads=1)


@pytest.fixture(scope="module")
def llama_run(smollm2_hf_dir, report_dir, prompts_file, torch_run, tmp_path_factory):
    """The llama.cpp backend on the GGUF files the torch run made, same text and settings; 4 of the
    prompts (every scored position is one request)."""
    prompts = tmp_path_factory.mktemp("few") / "prompts.txt"
    prompts.write_text("\n".join(read_prompts(prompts_file)[:4]) + "\n")
    return scorecard(smollm2_hf_dir, TYPES[1:], report_dir / "llama", backend="llama.cpp", prompts=prompts,
                     settings=SETTINGS, progress=False, threads=1)


def _rows(result):
    return {r["type"]: r for r in result["types"]}


def test_f16_equals_the_baseline(torch_run):
    f16 = _rows(torch_run)["F16"]
    assert f16["answers"]["similarity"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert f16["answers"]["identical_share"] == 1.0
    assert f16["text"]["kld"]["mean"] < 1e-4
    assert f16["teacher_forced"]["top1"]["mean"] == 1.0
    assert f16["text"]["perplexity_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert f16["weight_error"] < 1e-3


def test_quality_falls_with_bits(torch_run):
    rows = _rows(torch_run)
    q8, q4, q2 = rows["Q8_0"], rows["Q4_K_M"], rows["Q2_K"]
    similarity = [r["answers"]["similarity"]["mean"] for r in (q8, q4, q2)]
    kld = [r["text"]["kld"]["mean"] for r in (q8, q4, q2)]
    forced = [r["teacher_forced"]["kld"]["mean"] for r in (q8, q4, q2)]
    assert similarity[0] > similarity[1] > similarity[2], similarity
    assert 0 < kld[0] < kld[1] < kld[2], kld
    assert 0 < forced[0] < forced[1] < forced[2], forced
    assert q8["text"]["perplexity_ratio"] < q4["text"]["perplexity_ratio"] < q2["text"]["perplexity_ratio"]
    assert q8["weight_error"] < q4["weight_error"] < q2["weight_error"]
    assert q8["bits_per_weight"] > q4["bits_per_weight"] > q2["bits_per_weight"]
    # every mean comes with its 95% interval around it
    for r in (q8, q4, q2):
        for ci in (r["answers"]["similarity"], r["text"]["kld"], r["teacher_forced"]["kld"], r["text"]["perplexity"]):
            assert ci["lo"] <= ci["mean"] <= ci["hi"]


def test_report_files(torch_run, report_dir):
    md = (report_dir / "scorecard.md").read_text()
    first_table = md[md.index("\n| ") + 1:].split("\n\n")[0]
    table = [line for line in first_table.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0].strip("| ") for line in table[1:]] == ["baseline (BF16)", "F16", "Q8_0", "Q4_K_M", "Q2_K"]
    sizes = [float(line.split(" | ")[1]) for line in table[1:]]
    assert sizes == sorted(sizes, reverse=True)
    saved = json.loads((report_dir / "scorecard.json").read_text())
    assert saved["types"] == json.loads(json.dumps(torch_run["types"]))
    assert saved["settings"]["max_new_tokens"] == SETTINGS.max_new_tokens
    assert saved["versions"]["torch"] and saved["baseline"]["tensor_types"] == {"BF16": 211, "F32": 61}
    assert (report_dir / "scorecard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in TYPES:  # the converted files, with the size the report gives
        [gguf] = (report_dir / "files").glob(f"{saved['model'].rstrip('/').split('/')[-1]}.{name}.*.gguf")
        assert gguf.stat().st_size == _rows(saved)[name]["size_bytes"]


def test_cached_run_is_reused(torch_run, smollm2_hf_dir, report_dir, prompts_file, monkeypatch):
    from quantkit.eval import report

    def measured(*args):
        raise AssertionError("a cached result was measured again")

    with monkeypatch.context() as patched:
        patched.setattr(report.Run, "baseline", measured)
        patched.setattr(report.Run, "measure", measured)
        again = scorecard(smollm2_hf_dir, TYPES, report_dir, prompts=prompts_file, settings=SETTINGS, progress=False,
                          threads=1)
    assert again["types"] == torch_run["types"]
    # the command line with the same settings finds the same cached results
    (report_dir / "scorecard.md").unlink()
    args = ["scorecard", str(smollm2_hf_dir), "--types", ",".join(TYPES), "--prompts", str(prompts_file),
            "--max-new-tokens", str(SETTINGS.max_new_tokens), "--text-tokens", str(SETTINGS.text_tokens),
            "--threads", "1", "-o", str(report_dir)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "scorecard.md" in result.output
    assert json.loads((report_dir / "scorecard.json").read_text())["types"] == json.loads(json.dumps(torch_run["types"]))
    assert "| Q4_K_M | 105.5 | 6.17 |" in (report_dir / "scorecard.md").read_text()


def test_model_outputs_are_cached(torch_run, smollm2_hf_dir, report_dir, prompts_file, monkeypatch):
    """Adding a type runs the model for that type only (the baseline's answers and distributions come
    from the cache); another seed reruns no model pass at all and gives the same per-position values."""
    from quantkit.eval.backends import TorchBackend

    calls = []
    for method in ("prepare", "generate", "score"):
        def counted(self, *args, _original=getattr(TorchBackend, method), _method=method, **kwargs):
            calls.append(_method if _method != "prepare" else f"prepare {args[0]}")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(TorchBackend, method, counted)
    added = scorecard(smollm2_hf_dir, [*TYPES, "Q4_0"], report_dir, prompts=prompts_file, settings=SETTINGS,
                      progress=False, threads=1)
    assert calls == ["prepare Q4_0", "generate", "score", "score"]
    assert len(list((report_dir / "cache").glob("torch.*.outputs.*.npz"))) == len(TYPES) + 2  # with the baseline
    assert _rows(added)["Q4_0"]["text"]["kld"]["mean"] > 0
    calls.clear()
    reseeded = scorecard(smollm2_hf_dir, TYPES, report_dir, prompts=prompts_file, settings=replace(SETTINGS, seed=1),
                         progress=False, threads=1)
    assert calls == []
    for name in TYPES:
        before, after = _rows(torch_run)[name], _rows(reseeded)[name]
        assert after["text"]["per_position_kld"] == before["text"]["per_position_kld"]
        assert after["teacher_forced"]["per_prompt_kld"] == before["teacher_forced"]["per_prompt_kld"]
        assert after["answers"]["texts"] == before["answers"]["texts"]


def test_backends_agree_on_kld(torch_run, llama_run):
    """Same estimator on both sides (top-k lumped KLD over the same text): same order, within
    KLD_AGREEMENT (the level docs/scorecard.md states) for the types of at most 4.5 nominal bits per
    weight (Q4_K_M, Q2_K; Q8_0's KLD is of the size of llama.cpp's own activation rounding)."""
    t, ll = _rows(torch_run), _rows(llama_run)
    names = ["Q8_0", "Q4_K_M", "Q2_K"]
    torch_kld = [t[n]["text"]["kld_topk"]["mean"] for n in names]
    llama_kld = [ll[n]["text"]["kld"]["mean"] for n in names]
    assert ll["Q2_K"]["text"]["kld_method"].startswith("top-")
    assert np.argsort(torch_kld).tolist() == np.argsort(llama_kld).tolist() == [0, 1, 2]
    for name, a, b in zip(names, torch_kld, llama_kld):
        if quant_type(name.replace("_M", "")).bits_per_weight <= 4.5:
            assert abs(a - b) <= KLD_AGREEMENT * max(a, b), (name, a, b)
    # the same files, and the baseline answers the same through both backends
    assert [ll[n]["size_bytes"] for n in names] == [t[n]["size_bytes"] for n in names]
    assert llama_run["baseline"]["answers"]["texts"] == torch_run["baseline"]["answers"]["texts"][:4]


def test_errors_are_one_line(smollm2_hf_dir, tmp_path):
    with pytest.raises(QuantkitError, match="unknown preset 'Q7_X'"):
        scorecard(smollm2_hf_dir, ["Q8_0", "Q7_X"], tmp_path, progress=False, threads=1)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x7fELF\x00\x01\x02")
    cases = [
        (["--types", "Q8_0,NOPE"], "unknown preset 'NOPE'"),
        (["--prompts", str(empty)], f"{empty}: prompts file has no prompts"),
        (["--prompts", str(binary)], f"{binary}: prompts file is not a text file"),
        (["--text", str(tmp_path / "missing.txt")], "cannot read text"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, ["scorecard", str(smollm2_hf_dir), "-o", str(tmp_path / "r"), "--threads", "1", *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("quantkit: error: ") and message in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "scorecard.md").exists()


def test_model_that_cannot_generate(minilm_dir, tmp_path):
    result = scorecard(minilm_dir, ["Q8_0"], tmp_path, progress=False, threads=1)
    assert any("cannot generate" in note for note in result["notes"])
    (row,) = result["types"]
    assert "answers" not in row and "text" not in row
    assert 8.0 < row["bits_per_weight"] < 9.5 and 0 < row["weight_error"] < 0.01
    assert row["quantize_seconds"] > 0
    assert "cannot generate" in (tmp_path / "scorecard.md").read_text()
