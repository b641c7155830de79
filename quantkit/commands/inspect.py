"""``quantkit inspect FILE [--json]``: a GGUF file's metadata, tensors and totals (no tensor data read)."""

from __future__ import annotations

import json
from collections import Counter

import click

from ..ggufio import read_gguf

ARRAY_HEAD = 8  # elements shown of a longer array
STRING_CUT = 80  # characters shown of a longer string (text output)


def _clean(s: str) -> str:
    """A printable form of a metadata string (invalid UTF-8 the reader kept as surrogates -> U+FFFD)."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _type_name(spec) -> str:
    """STRING, UINT32, ... for scalars; ARRAY[STRING], ARRAY[ARRAY] for arrays (an ArrayType has .elem)."""
    if hasattr(spec, "elem"):
        return f"ARRAY[{spec.elem.name}]"
    return spec.name if spec is not None else "?"


def _elem_label(spec) -> str:
    elem = spec.elem.name if hasattr(spec, "elem") else "values"
    return {"STRING": "strings", "ARRAY": "arrays"}.get(elem, elem)


def _text_value(value, spec=None, length=None) -> str:
    """One metadata value as text: long strings cut, arrays past ARRAY_HEAD elements summarised
    (``value`` may be an array's head only, ``length`` its full length)."""
    if isinstance(value, str):
        s = _clean(value)
        if len(s) > STRING_CUT:
            return json.dumps(s[:STRING_CUT], ensure_ascii=False)[:-1] + f'..." ({len(s)} chars)'
        return json.dumps(s, ensure_ascii=False)
    if isinstance(value, list):
        length = len(value) if length is None else length
        items = [_text_value(v) for v in value[:ARRAY_HEAD]]
        if length > ARRAY_HEAD:
            return f"[{length} {_elem_label(spec)}: {', '.join(items)}, ... ]"
        return f"[{', '.join(items)}]"
    return repr(value)


def _shown(metadata, key):
    """(value, GGUF type, length): a top-level array's first ARRAY_HEAD + 1 elements only (the reader parses
    no more of the tokenizer's arrays), its length; a scalar whole, length None."""
    value, length = metadata.head(key, ARRAY_HEAD + 1)
    return value, metadata.value_type(key), length


def _json_value(value, spec, length=None):
    """One metadata value as JSON: {"type", "value"}, or for a long array {"type", "length", "head"}."""

    def plain(v):
        if isinstance(v, str):
            return _clean(v)
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    entry = {"type": _type_name(spec)}
    if isinstance(value, list):
        entry["length"] = len(value) if length is None else length
        if entry["length"] > ARRAY_HEAD:
            entry["head"] = plain(value[:ARRAY_HEAD])
            return entry
    entry["value"] = plain(value)
    return entry


def describe(f) -> dict:
    """Everything ``inspect`` shows, as plain data."""
    tensors = []
    type_counts: Counter = Counter()
    total_bytes = total_elements = 0
    for t in f.tensors:
        n = 1
        for d in t.shape:
            n *= d
        tensors.append({
            "name": _clean(t.name),
            "shape": list(t.shape),
            "type": t.qtype.name,
            "bytes": t.nbytes,
            "offset": t.offset,
            "bits_per_weight": round(8 * t.nbytes / n, 4) if n else None,
        })
        type_counts[t.qtype.name] += 1
        total_bytes += t.nbytes
        total_elements += n
    return {
        "path": str(f.path),
        "file_bytes": f.set_size,
        "files": 1 + len(f.shards),
        "version": f.version,
        "alignment": f.alignment,
        "data_offset": f.data_offset,
        "metadata": {_clean(k): _json_value(*_shown(f.metadata, k)) for k in f.metadata},
        "tensors": tensors,
        "totals": {
            "tensors": len(tensors),
            "bytes": total_bytes,
            "elements": total_elements,
            "bits_per_weight": round(8 * total_bytes / total_elements, 4) if total_elements else None,
            "types": dict(type_counts.most_common()),
        },
    }


def _print_text(f, info: dict) -> None:
    out = click.echo
    files = f" in {info['files']} split files" if info["files"] > 1 else ""
    out(f"{info['path']}: GGUF v{info['version']}, {info['file_bytes']:,} bytes{files}, alignment {info['alignment']}, "
        f"data at offset {info['data_offset']:,}")
    out(f"\nmetadata ({len(f.metadata)} keys):")
    for key in f.metadata:
        value, spec, length = _shown(f.metadata, key)
        out(f"  {_clean(key)} [{_type_name(spec)}] = {_text_value(value, spec, length)}")
    out(f"\ntensors ({len(info['tensors'])}):")
    rows = [("name", "shape", "type", "bytes", "bpw")]
    for t in info["tensors"]:
        bpw = f"{t['bits_per_weight']:.2f}" if t["bits_per_weight"] is not None else "-"
        rows.append((t["name"], " x ".join(map(str, t["shape"])) or "scalar", t["type"], f"{t['bytes']:,}", bpw))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        out("  " + "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    totals = info["totals"]
    bpw = f"{totals['bits_per_weight']:.2f}" if totals["bits_per_weight"] is not None else "-"
    out(f"\ntotals: {totals['tensors']} tensors, {totals['elements']:,} weights, {totals['bytes']:,} bytes, "
        f"{bpw} bits per weight")
    out("types: " + ", ".join(f"{name} {count}" for name, count in totals["types"].items()))


@click.command()
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the same information as JSON.")
def inspect(file, as_json):
    """Show a GGUF file's metadata, tensors and totals (reads no tensor data)."""
    with read_gguf(file) as f:
        info = describe(f)
        if as_json:
            click.echo(json.dumps(info, indent=2, ensure_ascii=False))
        else:
            _print_text(f, info)
