"""Integer activations (W8A8, W4A4): the matmuls at the hardware's int8 / int4 peak, activations at that width."""

import json

import pytest
from typer.testing import CliRunner

from rooflens.cli import app
from rooflens.models.loader import shipped_config
from rooflens.roofline.hardware import get_profile
from rooflens.roofline.whatif import WhatIfError, precision_for, what_if

LLAMA2 = shipped_config("llama-2-7b")[0]
LONG = dict(batches=[16], prompt_len=2048, gen_len=128)


def _prefill_s(result):
    ((_, _, p),) = result.projections
    return p.prefill_time_s


def test_w8a8_prefill_runs_at_the_int8_peak():
    bf16 = what_if("llama-2-7b", LLAMA2, "a100-80g-sxm", bits=[8], **LONG)
    w8a8 = what_if("llama-2-7b", LLAMA2, "a100-80g-sxm", bits=[8], act_bits=8, **LONG)
    assert w8a8.ceilings.peak_flops == get_profile("a100-80g-sxm").peak_flops_si("int8") == 624e12
    assert bf16.ceilings.peak_flops == 312e12
    # a long prefill at batch 16 is compute-bound: twice the peak, about half the time
    assert _prefill_s(w8a8) == pytest.approx(_prefill_s(bf16) / 2, rel=0.05)
    ((_, _, p),) = w8a8.projections
    assert p.precision.act_bits == 8 and p.precision.kv_bits == 16


def test_w4a4_uses_the_int4_peak_where_the_datasheet_has_one_and_says_why_not_elsewhere():
    a100 = what_if("llama-2-7b", LLAMA2, "a100-80g-sxm", bits=[4], act_bits=4, **LONG)
    assert a100.ceilings.peak_flops == 1248e12 and "int4" in a100.ceilings.description
    h100 = what_if("llama-2-7b", LLAMA2, "h100-sxm", bits=[4], act_bits=4, **LONG)  # Hopper: no int4 tensor cores
    assert h100.ceilings is None and "no int4 ceilings for 'h100-sxm'" in h100.why
    assert h100.costs  # the FLOPs and bytes still


def test_bad_act_bits_is_an_error_naming_the_flag():
    with pytest.raises(WhatIfError, match=r"--act-bits 6: allowed 8, 4"):
        precision_for(8, 128, act_bits=6)
    r = CliRunner().invoke(app, ["roofline", "llama-2-7b", "--hw", "a100-80g-sxm", "--act-bits", "6"])
    assert r.exit_code == 2 and "--act-bits 6: allowed 8, 4" in r.output
    r = CliRunner().invoke(app, ["roofline", "llama-2-7b", "--hw", "all", "--act-bits", "8"])
    assert r.exit_code == 2 and "--act-bits projects on one profile" in r.output


def test_cli_json_carries_the_integer_precision():
    r = CliRunner().invoke(
        app, ["roofline", "llama-2-7b", "--hw", "t4", "--bits", "8", "--act-bits", "8", "--batch", "4", "--json"]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["ceilings"]["peak_flops"] == 130e12
    assert data["projections"][0]["precision"]["act_bits"] == 8
