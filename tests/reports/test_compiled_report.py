"""The report's eager-vs-compiled sentences: how much of a technique's speedup survives compilation."""

from __future__ import annotations

from factories import make_record
from rooflens.reports.compiled import compile_sentences, pairs
from rooflens.reports.story import story


def _rec(label: str, engine: str, decode: float, **options):
    r = make_record(engine=label, decode=decode, rel_sd=0.0)
    return r.model_copy(update={"cell": r.cell.model_copy(update={"engine": engine, "engine_options": options})})


def test_a_technique_measured_both_ways_is_compared_with_the_baseline_both_ways():
    records = [
        _rec("hf", "hf", 30.0),
        _rec("hf-c", "hf", 45.0, cache="static", compile=True),
        _rec("int4", "quantized", 60.0, bits=4),
        _rec("int4-c", "quantized", 67.5, bits=4, compile=True),
        _rec("int8", "quantized", 40.0, bits=8),  # eager only: no pair, no sentence
    ]
    assert len(pairs(records)) == 2
    got = compile_sentences(records)
    assert got[0].startswith("Compiled, hf-c decodes at 45.0 tok/s, 1.50x its eager hf")
    # eager 60/30 = 2.00x, compiled 67.5/45 = 1.50x: half of the gain survives
    assert "int4's speedup over the baseline is 2.00x eager and 1.50x compiled" in got[1]
    assert "50% of the gain survives" in got[1]
    assert len(got) == 2
    assert got[1] in story(records)


def test_without_a_compiled_baseline_nothing_is_said():
    records = [
        _rec("hf", "hf", 30.0),
        _rec("int4", "quantized", 60.0, bits=4),
        _rec("int4-c", "quantized", 70.0, bits=4, compile=True),
    ]
    assert compile_sentences(records) == []
