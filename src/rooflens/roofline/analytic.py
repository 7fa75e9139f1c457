"""Analytic per-op roofline model of a decoder-only transformer, from its config alone (no weights).

For one forward pass (a prefill over the prompt, or one decode step) every op of a layer and of the
model head/tail gets its FLOPs and the bytes it moves, split into weights read, activations read +
written and KV cache read + written. The time of an op at the roofline is
``max(flops / peak_flops, bytes / bandwidth)``; the time of a pass is the sum over ops (each layer op
counted ``layers_executed`` times). This is the LLM-Viewer model (Yuan et al., arXiv 2402.16363) with
its known slips fixed (the LM head has the factor 2 of a matmul; GQA uses the KV heads everywhere).

Conventions
-----------
* Matmul ``[M, K] x [K, N]`` = ``2·M·N·K`` FLOPs (a multiply-add is 2). Linear layers:
  ``M = batch·tokens``. A bias adds ``M·N`` FLOPs, counted in ``flops`` but not in ``matmul_flops``
  (a flop counter such as ``torch.utils.flop_counter`` counts only the product of an ``addmm``).
* Attention is one fused op, ``attention``, as SDPA runs it (transformers 5's default; flash kernels on a GPU,
  the CPU flash kernel): ``Q·Kᵀ`` and ``P·V`` are each ``2·B·heads·q_len·kv_len·head_dim`` FLOPs, the softmax
  7 per score, and no score matrix is materialised: it reads Q and the attended K and V (at their KV heads,
  once) and writes the output. A model loaded with ``attn_implementation="eager"`` (``ModelShape.attention``)
  gets the unfused path instead: ``attn_scores = Q·Kᵀ``, ``softmax``, ``attn_values = P·V``, the score
  matrix written, read and written again by the softmax, and read by ``attn_values``. Either way there is
  **no causal halving**: the kernels compute the full ``q_len × kv_len`` product and mask it (a flop counter
  counts the full product).
* Weights are read once per pass, whatever the batch (decode and prefill alike); the embedding reads
  only the ``batch·tokens`` rows it looks up (GPT-2 positions: ``tokens`` rows, shared by the batch);
  the LM head reads its full matrix, even when tied to the embedding.
* The LM head: prefill computes the logits of the last prompt token of each sequence only (what
  ``generate()`` does with ``logits_to_keep=1``, and what serving engines do) unless
  ``all_logits=True`` (a plain ``model(input_ids)`` forward); a decode pass computes the logits of
  every new token (``new_tokens`` > 1 is a speculative verification, which needs them all).
* KV cache: ``k_proj``/``v_proj`` (GPT-2: the K, V part of ``c_attn``) write their outputs into the
  cache; ``attn_scores`` reads K and ``attn_values`` reads V of every attended position from it (in
  prefill that is the K, V just written). The rotary embedding is counted as reading and writing Q and
  K as activations (in place, before the cache write).
* Precision: weights at ``weight_bits`` (every parameter, including norms, embedding and LM head;
  ``bits_per_weight`` folds group-wise scales/zeros in), activations at ``act_bits`` (logits included),
  KV cache at ``kv_bits``.
* Sliding-window attention (Mistral): eager prefill still computes the full ``prompt × prompt``
  product (the window is a mask); a cache keeps the last ``window - 1`` tokens (what a next query can
  see), so a decode step attends to ``min(cache, window - 1) + new_tokens`` positions.

Elementwise FLOP estimates (per element; they are memory-bound, so the exact constant barely matters)
----------------------------------------------------------------------------------------------------
* RMSNorm 4 (square, sum, scale by 1/rms, scale by weight); LayerNorm 7 (mean, subtract, square,
  sum, scale, weight, bias).
* Rotary 3 per element of Q and K (``x·cos + rotate_half(x)·sin``).
* Softmax 7 per score (scale, mask add, max, subtract, exp, sum, divide).
* SiLU-gated product 5 per intermediate element (sigmoid ≈ 3, times x, times up); GELU (tanh form) 9.
* Residual add 1 per element; one ``residual_add`` op covers both adds of a layer.
* Embedding lookup 0; GPT-2 ``wpe`` 1 (adding the position rows to the token rows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ModelShape",
    "OpCost",
    "PhaseCost",
    "Precision",
    "Projection",
    "bits_per_weight",
    "decode_context",
    "decode_cost",
    "kv_cache_bytes",
    "prefill_cost",
    "project",
    "weight_storage_bytes",
]

#: model_type (as in a transformers config) -> family of the analytic model.
SUPPORTED_MODEL_TYPES: dict[str, str] = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2"}

RMSNORM_FLOPS = 4.0
LAYERNORM_FLOPS = 7.0
ROTARY_FLOPS = 3.0
SOFTMAX_FLOPS = 7.0
SILU_MUL_FLOPS = 5.0
GELU_FLOPS = 9.0
RESIDUAL_FLOPS = 1.0


# --------------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class ModelShape:
    """Everything the analytic model needs about a model, read from its config.

    ``family`` is ``"llama"`` (Llama, Mistral, Qwen2, SmolLM: RMSNorm, rotary positions, GQA,
    SiLU-gated MLP; Qwen2 has q/k/v biases) or ``"gpt2"`` (LayerNorm, learned positions, fused
    ``c_attn``, GELU MLP, biases everywhere, LM head tied to the token embedding).
    """

    family: str
    model_type: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    max_positions: int = 0  # rows of a learned position table (GPT-2); 0 for rotary models
    sliding_window: int | None = None
    attention: str = "sdpa"  # "sdpa" (fused, no score matrix) or "eager" (scores, softmax, values)

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Read a transformers ``PretrainedConfig``; an unsupported ``model_type`` raises ``ValueError``."""
        model_type = getattr(config, "model_type", None)
        family = SUPPORTED_MODEL_TYPES.get(str(model_type))
        if family is None:
            raise ValueError(
                f"model_type {model_type!r} is not supported by the analytic model; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if family == "gpt2":
            hidden = int(config.n_embd)
            heads = int(config.n_head)
            return cls(
                family=family,
                model_type=str(model_type),
                num_layers=int(config.n_layer),
                hidden=hidden,
                num_heads=heads,
                num_kv_heads=heads,
                head_dim=hidden // heads,
                intermediate=int(getattr(config, "n_inner", None) or 4 * hidden),
                vocab=int(config.vocab_size),
                tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
                qkv_bias=True,
                o_bias=True,
                mlp_bias=True,
                max_positions=int(config.n_positions),
                attention=_attention_kind(config),
            )
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        attention_bias = bool(getattr(config, "attention_bias", False))
        return cls(
            family=family,
            model_type=str(model_type),
            num_layers=int(config.num_hidden_layers),
            hidden=hidden,
            num_heads=heads,
            num_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            intermediate=int(config.intermediate_size),
            vocab=int(config.vocab_size),
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=attention_bias or model_type == "qwen2",  # Qwen2: q/k/v bias, no o bias
            o_bias=attention_bias and model_type == "llama",
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            sliding_window=_sliding_window(config),
            attention=_attention_kind(config),
        )

    @property
    def q_dim(self) -> int:
        """Width of Q (and of the attention output): ``num_heads · head_dim``."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): ``num_kv_heads · head_dim``."""
        return self.num_kv_heads * self.head_dim

    def layer_param_count(self) -> int:
        """Parameters of one transformer block."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        attn = h * (q + 2 * kv) + (q + 2 * kv) * self.qkv_bias + q * h + h * self.o_bias
        if self.family == "gpt2":
            return attn + h * i + i + i * h + h + 2 * (2 * h)
        return attn + 3 * h * i + (2 * i + h) * self.mlp_bias + 2 * h

    def param_count(self) -> int:
        """Unique parameters (a tied LM head counted once), as ``sum(p.numel())`` of the module."""
        h = self.hidden
        embed = self.vocab * h + self.max_positions * h
        final_norm = 2 * h if self.family == "gpt2" else h
        head = 0 if self.tied_embeddings else self.vocab * h
        return self.num_layers * self.layer_param_count() + embed + final_norm + head


def _attention_kind(config: Any) -> str:
    """``eager`` when the model was loaded with eager attention, else ``sdpa`` (fused: SDPA, flash, ...)."""
    try:
        implementation = config._attn_implementation
    except AttributeError:
        implementation = None
    return "eager" if implementation == "eager" else "sdpa"


def _sliding_window(config: Any) -> int | None:
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:  # Qwen2: a window that is off
        return None
    types = set(getattr(config, "layer_types", None) or [])
    if types and types != {"sliding_attention"}:
        if types == {"full_attention"}:
            return None
        raise ValueError(f"mixed attention layer types {sorted(types)} are not modelled")
    return int(window)


# --------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class Precision:
    """Bits per weight (including the scales/zeros of a group-wise format), activation and KV element."""

    weight_bits: float = 16.0
    act_bits: float = 16.0
    kv_bits: float = 16.0

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits", "kv_bits"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


def bits_per_weight(bits: int, group_size: int | None, scale_bits: int = 16, zero_bits: int = 0) -> float:
    """Storage bits per weight of a group-wise quantized format: ``bits + (scale + zero bits) / group``.

    int4 with one fp16 scale per 32 weights = 4.5; with an fp16 zero point too = 5.0.
    ``group_size=None`` (per-tensor or per-channel scales) counts no overhead: it is negligible.
    """
    if bits <= 0:
        raise ValueError(f"bits must be > 0, got {bits}")
    if group_size is None:
        return float(bits)
    if group_size <= 0:
        raise ValueError(f"group_size must be > 0 or None, got {group_size}")
    return bits + (scale_bits + zero_bits) / group_size


# --------------------------------------------------------------------------- op and phase costs


@dataclass(frozen=True)
class OpCost:
    """FLOPs and bytes of one op; ``scope="layer"`` values are per layer, ``"model"`` once per pass.

    ``matmul_flops`` is the part of ``flops`` done as a matrix product (0 for elementwise ops; for a
    linear with bias it excludes the bias add): what a matmul flop counter counts.
    """

    name: str
    scope: str
    flops: float
    weight_bytes: float
    act_bytes: float
    kv_bytes: float
    matmul_flops: float = 0.0

    @property
    def is_matmul(self) -> bool:
        """True for ops that are matrix products (linear layers, attention scores/values, LM head)."""
        return self.matmul_flops > 0

    @property
    def bytes(self) -> float:
        """All bytes moved: weights + activations + KV cache."""
        return self.weight_bytes + self.act_bytes + self.kv_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP/byte."""
        return self.flops / self.bytes if self.bytes else float("inf")

    def time_at_roofline(self, bandwidth: float, peak_flops: float) -> float:
        """Seconds for one execution: ``max(flops / peak_flops, bytes / bandwidth)``."""
        return max(self.flops / peak_flops, self.bytes / bandwidth)

    def bound(self, bandwidth: float, peak_flops: float) -> str:
        """``"compute"`` if the FLOPs take longer than the bytes, else ``"memory"``."""
        return "compute" if self.flops / peak_flops > self.bytes / bandwidth else "memory"


@dataclass(frozen=True)
class PhaseCost:
    """The ops of one forward pass and their totals.

    ``tokens`` are the tokens processed per sequence (the prompt length in prefill; 1, or the ``k``
    verified tokens, in decode); ``context`` is the KV length each query attends to.
    """

    phase: str
    batch: int
    tokens: int
    context: int
    ops: tuple[OpCost, ...]
    layers_executed: float

    def count(self, op: OpCost) -> float:
        """How many times ``op`` runs in the pass: ``layers_executed`` for layer ops, else 1."""
        return self.layers_executed if op.scope == "layer" else 1.0

    def _total(self, attr: str) -> float:
        return sum(getattr(op, attr) * self.count(op) for op in self.ops)

    @property
    def flops(self) -> float:
        """FLOPs of the whole pass."""
        return self._total("flops")

    @property
    def matmul_flops(self) -> float:
        """FLOPs of the matrix products only (comparable with a matmul flop counter)."""
        return self._total("matmul_flops")

    @property
    def weight_bytes(self) -> float:
        """Weight bytes read in the pass."""
        return self._total("weight_bytes")

    @property
    def act_bytes(self) -> float:
        """Activation bytes read + written in the pass."""
        return self._total("act_bytes")

    @property
    def kv_bytes(self) -> float:
        """KV-cache bytes read + written in the pass."""
        return self._total("kv_bytes")

    @property
    def bytes(self) -> float:
        """All bytes moved in the pass."""
        return self._total("bytes")

    @property
    def intensity(self) -> float:
        """Arithmetic intensity of the whole pass in FLOP/byte."""
        return self.flops / self.bytes

    def op(self, name: str) -> OpCost:
        """The op called ``name`` (``KeyError`` if there is none)."""
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(f"no op {name!r} in the {self.phase} pass ({', '.join(o.name for o in self.ops)})")

    def time_at_roofline(self, bandwidth: float, peak_flops: float) -> float:
        """Seconds of the pass: the sum over ops (and their repetitions) of each op's roofline time."""
        _check_ceilings(bandwidth, peak_flops)
        return sum(op.time_at_roofline(bandwidth, peak_flops) * self.count(op) for op in self.ops)

    def bound(self, bandwidth: float, peak_flops: float) -> str:
        """``"compute"`` if compute-bound ops take at least half of the pass time, else ``"memory"``."""
        return "compute" if self.compute_time_fraction(bandwidth, peak_flops) >= 0.5 else "memory"

    def compute_time_fraction(self, bandwidth: float, peak_flops: float) -> float:
        """Share of the pass time spent in compute-bound ops."""
        total = self.time_at_roofline(bandwidth, peak_flops)
        compute = sum(
            op.time_at_roofline(bandwidth, peak_flops) * self.count(op)
            for op in self.ops
            if op.bound(bandwidth, peak_flops) == "compute"
        )
        return compute / total

    def op_rows(self, bandwidth: float, peak_flops: float) -> list[dict[str, Any]]:
        """One dict per op: FLOPs and bytes of ONE execution, ``count`` executions, ``time_s`` for all."""
        _check_ceilings(bandwidth, peak_flops)
        return [
            {
                "name": op.name,
                "scope": op.scope,
                "count": self.count(op),
                "flops": op.flops,
                "weight_bytes": op.weight_bytes,
                "act_bytes": op.act_bytes,
                "kv_bytes": op.kv_bytes,
                "intensity": op.intensity,
                "bound": op.bound(bandwidth, peak_flops),
                "time_s": op.time_at_roofline(bandwidth, peak_flops) * self.count(op),
            }
            for op in self.ops
        ]

    def totals(self) -> dict[str, float]:
        """FLOPs and bytes of the whole pass (what needs no ceilings)."""
        return {
            "flops": self.flops,
            "weight_bytes": self.weight_bytes,
            "act_bytes": self.act_bytes,
            "kv_bytes": self.kv_bytes,
            "bytes": self.bytes,
        }

    def to_dict(self, bandwidth: float, peak_flops: float) -> dict[str, Any]:
        """JSON-ready: shape of the pass, op rows, totals, intensity, bound and roofline time."""
        return {
            "phase": self.phase,
            "batch": self.batch,
            "tokens": self.tokens,
            "context": self.context,
            "layers_executed": self.layers_executed,
            "ops": self.op_rows(bandwidth, peak_flops),
            "totals": self.totals(),
            "intensity": self.intensity,
            "bound": self.bound(bandwidth, peak_flops),
            "compute_time_fraction": self.compute_time_fraction(bandwidth, peak_flops),
            "time_s": self.time_at_roofline(bandwidth, peak_flops),
        }


def _check_ceilings(bandwidth: float, peak_flops: float) -> None:
    if not (bandwidth and bandwidth > 0 and peak_flops and peak_flops > 0):
        raise ValueError(f"bandwidth and peak_flops must be > 0, got {bandwidth!r} and {peak_flops!r}")


# --------------------------------------------------------------------------- op builders


def _linear(name: str, rows: int, d_in: int, d_out: int, bias: bool, p: Precision, *, out_to_kv: float = 0.0) -> OpCost:
    """``rows × d_in`` times ``d_in × d_out`` (+ bias); ``out_to_kv`` of the output goes to the KV cache."""
    w, a, kv = p.weight_bits / 8, p.act_bits / 8, p.kv_bits / 8
    mm = 2.0 * rows * d_in * d_out
    out = float(rows) * d_out
    return OpCost(
        name=name,
        scope="layer",
        flops=mm + (out if bias else 0.0),
        weight_bytes=(d_in * d_out + (d_out if bias else 0)) * w,
        act_bytes=rows * d_in * a + out * (1 - out_to_kv) * a,
        kv_bytes=out * out_to_kv * kv,
        matmul_flops=mm,
    )


def _elementwise(
    name: str,
    scope: str,
    elements: float,
    flops_per: float,
    reads: float,
    writes: float,
    p: Precision,
    *,
    weight_elements: float = 0.0,
) -> OpCost:
    """``elements`` outputs at ``flops_per`` each; ``reads``/``writes`` are activation tensors of that size."""
    return OpCost(
        name=name,
        scope=scope,
        flops=elements * flops_per,
        weight_bytes=weight_elements * p.weight_bits / 8,
        act_bytes=elements * (reads + writes) * p.act_bits / 8,
        kv_bytes=0.0,
    )


def _attention(shape: ModelShape, batch: int, q_len: int, kv_len: int, p: Precision) -> list[OpCost]:
    """Fused attention (reads Q, cached K and V; writes the output), or eager: scores (reads Q and cached K),
    softmax, values (reads cached V)."""
    a, kv = p.act_bits / 8, p.kv_bits / 8
    heads, d = shape.num_heads, shape.head_dim
    scores = float(batch) * heads * q_len * kv_len
    mm = 2.0 * scores * d
    q_elems = float(batch) * q_len * shape.q_dim
    cached = float(batch) * kv_len * shape.kv_dim
    if shape.attention != "eager":
        flops = 2 * mm + scores * SOFTMAX_FLOPS
        return [OpCost("attention", "layer", flops, 0.0, 2 * q_elems * a, 2 * cached * kv, matmul_flops=2 * mm)]
    return [
        OpCost("attn_scores", "layer", mm, 0.0, (q_elems + scores) * a, cached * kv, matmul_flops=mm),
        _elementwise("softmax", "layer", scores, SOFTMAX_FLOPS, 1, 1, p),
        OpCost("attn_values", "layer", mm, 0.0, (scores + q_elems) * a, cached * kv, matmul_flops=mm),
    ]


def _layer_ops(shape: ModelShape, batch: int, q_len: int, kv_len: int, p: Precision) -> list[OpCost]:
    n = batch * q_len
    h, i = shape.hidden, shape.intermediate
    attention = _attention(shape, batch, q_len, kv_len, p)
    residual = _elementwise("residual_add", "layer", 2.0 * n * h, RESIDUAL_FLOPS, 2, 1, p)
    if shape.family == "gpt2":
        qkv = h + 2 * shape.kv_dim
        return [
            _elementwise("ln_1", "layer", n * h, LAYERNORM_FLOPS, 1, 1, p, weight_elements=2 * h),
            _linear("c_attn", n, h, qkv, True, p, out_to_kv=2 * shape.kv_dim / qkv),
            *attention,
            _linear("c_proj", n, shape.q_dim, h, True, p),
            residual,
            _elementwise("ln_2", "layer", n * h, LAYERNORM_FLOPS, 1, 1, p, weight_elements=2 * h),
            _linear("c_fc", n, h, i, True, p),
            _elementwise("gelu", "layer", n * i, GELU_FLOPS, 1, 1, p),
            _linear("mlp_c_proj", n, i, h, True, p),
        ]
    rotary_elems = float(n) * (shape.q_dim + shape.kv_dim)
    return [
        _elementwise("input_norm", "layer", n * h, RMSNORM_FLOPS, 1, 1, p, weight_elements=h),
        _linear("q_proj", n, h, shape.q_dim, shape.qkv_bias, p),
        _linear("k_proj", n, h, shape.kv_dim, shape.qkv_bias, p, out_to_kv=1.0),
        _linear("v_proj", n, h, shape.kv_dim, shape.qkv_bias, p, out_to_kv=1.0),
        _elementwise("rotary", "layer", rotary_elems, ROTARY_FLOPS, 1, 1, p),
        *attention,
        _linear("o_proj", n, shape.q_dim, h, shape.o_bias, p),
        residual,
        _elementwise("post_attn_norm", "layer", n * h, RMSNORM_FLOPS, 1, 1, p, weight_elements=h),
        _linear("gate_proj", n, h, i, shape.mlp_bias, p),
        _linear("up_proj", n, h, i, shape.mlp_bias, p),
        # reads gate and up, writes their product
        _elementwise("act_mul", "layer", n * i, SILU_MUL_FLOPS, 2, 1, p),
        _linear("down_proj", n, i, h, shape.mlp_bias, p),
    ]


def _model_ops(shape: ModelShape, batch: int, q_len: int, logit_rows: int, p: Precision) -> list[OpCost]:
    n = batch * q_len
    h, w, a = shape.hidden, p.weight_bits / 8, p.act_bits / 8
    ops = [OpCost("embedding", "model", 0.0, n * h * w, n * h * a, 0.0)]
    if shape.family == "gpt2":
        # position rows (shared by the batch) added to the token rows
        ops.append(OpCost("wpe", "model", float(n * h), q_len * h * w, 2.0 * n * h * a, 0.0))
        norm = _elementwise("final_norm", "model", n * h, LAYERNORM_FLOPS, 1, 1, p, weight_elements=2 * h)
    else:
        norm = _elementwise("final_norm", "model", n * h, RMSNORM_FLOPS, 1, 1, p, weight_elements=h)
    mm = 2.0 * logit_rows * h * shape.vocab
    head = OpCost("lm_head", "model", mm, shape.vocab * h * w, (logit_rows * h + logit_rows * shape.vocab) * a, 0.0, mm)
    return [*ops, norm, head]


def _layers(shape: ModelShape, layers_executed: float | None) -> float:
    if layers_executed is None:
        return float(shape.num_layers)
    if not 0 < layers_executed <= shape.num_layers:
        raise ValueError(f"layers_executed must be in (0, {shape.num_layers}], got {layers_executed}")
    return float(layers_executed)


def _positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def prefill_cost(
    shape: ModelShape,
    *,
    batch: int,
    prompt_len: int,
    precision: Precision = Precision(),
    layers_executed: float | None = None,
    all_logits: bool = False,
) -> PhaseCost:
    """The prefill pass over ``prompt_len`` tokens of ``batch`` sequences (empty cache).

    Attention is the full ``prompt_len²`` product (no causal halving, see the module docstring). The
    LM head computes the last token's logits per sequence, or all of them with ``all_logits=True``.
    """
    _positive(batch=batch, prompt_len=prompt_len)
    ops = _layer_ops(shape, batch, prompt_len, prompt_len, precision)
    ops += _model_ops(shape, batch, prompt_len, batch * (prompt_len if all_logits else 1), precision)
    return PhaseCost("prefill", batch, prompt_len, prompt_len, tuple(ops), _layers(shape, layers_executed))


def decode_context(prompt_len: int, gen_len: int) -> int:
    """The mean decode context, ``prompt_len + gen_len // 2``: the cache grows from ``prompt_len`` to
    ``prompt_len + gen_len - 1`` over a generation and every cost of a step is linear in the context, so the
    step at the mean context stands for the average one."""
    return prompt_len + gen_len // 2


def decode_cost(
    shape: ModelShape,
    *,
    batch: int,
    context_len: int,
    precision: Precision = Precision(),
    new_tokens: int = 1,
    layers_executed: float | None = None,
    extra_ops: tuple[OpCost, ...] = (),
) -> PhaseCost:
    """One decode pass: ``new_tokens`` tokens per sequence (1 = plain decoding, k = a speculative
    verification of k tokens) attending to ``context_len`` cached tokens plus themselves.

    Under a sliding window the cache holds at most ``window - 1`` tokens. Every new token gets logits.
    ``extra_ops`` (an engine's own work per pass, e.g. an early-exit draft head) are added as they are.
    """
    _positive(batch=batch, new_tokens=new_tokens)
    if context_len < 0:
        raise ValueError(f"context_len must be >= 0, got {context_len}")
    cached = context_len if shape.sliding_window is None else min(context_len, shape.sliding_window - 1)
    kv_len = cached + new_tokens
    ops = _layer_ops(shape, batch, new_tokens, kv_len, precision)
    ops += _model_ops(shape, batch, new_tokens, batch * new_tokens, precision)
    ops += list(extra_ops)
    return PhaseCost("decode", batch, new_tokens, kv_len, tuple(ops), _layers(shape, layers_executed))


def decode_weight_elements(config: Any) -> float:
    """Weight elements a decode step reads (every weight once, one row of the embedding): the count that
    an engine's measured weight bytes per step are divided by to give ``weight_bits``."""
    shape = ModelShape.from_config(config)
    return decode_cost(shape, batch=1, context_len=1, precision=Precision(weight_bits=8.0)).weight_bytes


def weight_storage_bytes(shape: ModelShape, precision: Precision) -> float:
    """Bytes of all parameters at ``weight_bits`` (embedding and LM head included, tied counted once)."""
    return shape.param_count() * precision.weight_bits / 8


def kv_cache_bytes(shape: ModelShape, *, batch: int, seq_len: int, precision: Precision) -> float:
    """Bytes of K and V of all layers for ``batch`` sequences of ``seq_len`` tokens at ``kv_bits``.

    Under a sliding window only the last ``window - 1`` tokens are kept.
    """
    tokens = seq_len if shape.sliding_window is None else min(seq_len, shape.sliding_window - 1)
    return 2.0 * shape.num_layers * batch * tokens * shape.kv_dim * precision.kv_bits / 8


# --------------------------------------------------------------------------- projection


@dataclass(frozen=True)
class Projection:
    """Bound-limited performance of a generation (prefill + decode) on a roofline.

    ``decode`` is one decode step at the mean decode context (:func:`decode_context`).
    """

    prefill: PhaseCost
    decode: PhaseCost
    gen_len: int
    precision: Precision
    bandwidth: float
    peak_flops: float

    @property
    def ridge(self) -> float:
        """Ridge point in FLOP/byte: ``peak_flops / bandwidth``."""
        return self.peak_flops / self.bandwidth

    @property
    def prefill_time_s(self) -> float:
        """Seconds of the prefill pass at the roofline."""
        return self.prefill.time_at_roofline(self.bandwidth, self.peak_flops)

    @property
    def decode_step_time_s(self) -> float:
        """Seconds of one decode step (at the mean decode context) at the roofline."""
        return self.decode.time_at_roofline(self.bandwidth, self.peak_flops)

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second over the batch: ``batch · new tokens / decode step time``."""
        return self.decode.batch * self.decode.tokens / self.decode_step_time_s

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens per second over the batch: ``batch · prompt_len / prefill time``."""
        return self.prefill.batch * self.prefill.tokens / self.prefill_time_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready projection: inputs, ceilings, and per phase op rows, totals, bound and tokens/s."""
        prefill = self.prefill.to_dict(self.bandwidth, self.peak_flops)
        prefill["tokens_per_s"] = self.prefill_tokens_per_s
        decode = self.decode.to_dict(self.bandwidth, self.peak_flops)
        decode["tokens_per_s"] = self.decode_tokens_per_s
        return {
            "batch": self.prefill.batch,
            "prompt_len": self.prefill.tokens,
            "gen_len": self.gen_len,
            "precision": asdict(self.precision),
            "bandwidth": self.bandwidth,
            "peak_flops": self.peak_flops,
            "ridge": self.ridge,
            "prefill": prefill,
            "decode": decode,
        }


def project(
    shape: ModelShape,
    *,
    batch: int,
    prompt_len: int,
    gen_len: int,
    precision: Precision,
    bandwidth: float,
    peak_flops: float,
) -> Projection:
    """Project prefill and decode of ``batch`` sequences on a roofline of ``bandwidth`` (B/s) and
    ``peak_flops`` (FLOP/s); decode at the mean context (:func:`decode_context`)."""
    _positive(gen_len=gen_len)
    _check_ceilings(bandwidth, peak_flops)
    return Projection(
        prefill=prefill_cost(shape, batch=batch, prompt_len=prompt_len, precision=precision),
        decode=decode_cost(shape, batch=batch, context_len=decode_context(prompt_len, gen_len), precision=precision),
        gen_len=gen_len,
        precision=precision,
        bandwidth=float(bandwidth),
        peak_flops=float(peak_flops),
    )
