"""A pretrained EAGLE-1 head as early_exit's candidate source (``draft: eagle:<folder>``), as SpecEE uses one.

Checkpoint format (EAGLE-1, e.g. ``yuhuili/EAGLE-llama2-chat-7B``): a folder with ``config.json`` (a Llama
config of one decoder layer) and ``pytorch_model.bin`` or ``model.safetensors`` holding ``fc.weight`` [h, 2h]
(``fc.bias`` when the head was trained with one), ``layers.0.self_attn.{q,k,v,o}_proj.weight``,
``layers.0.mlp.{gate,up,down}_proj.weight`` and ``layers.0.post_attention_layernorm.weight``, optionally
``embed_tokens.weight``.

The computation, as read in EAGLE-1's ``cnets1.py`` / ``ea_model.py`` (SafeAILab/EAGLE): the head's input at the
step that feeds token x_{t+1} is ``cat(embed(x_{t+1}), f_t)``, where ``f_t`` is the target's *final-normed* hidden
state (the output of the base ``LlamaModel``, which the base LM head reads directly); ``fc`` maps it to h, one
Llama decoder layer whose layer 0 has **no input norm** (the residual stream enters attention unnormalised)
mixes in earlier positions through its own KV cache, and the target's LM head reads the layer's output with
**no final norm**. Assumptions stated: the target's own embedding is used (EAGLE-1 loads the base model's
embedding, ``load_emb=True``; a checkpoint's ``embed_tokens.weight`` is only checked for shape), and the layer's
RoPE is the checkpoint config's. After an early exit the engine feeds the exit layer's normed state for ``f_t``
(the final one does not exist), as it does for its own head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from rooflens.engines.decoding import LayerStack

LAYER_KEYS = tuple(
    f"layers.0.{name}.weight"
    for name in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
        "post_attention_layernorm",
    )
)
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")


def resolve_folder(spec: str) -> Path:
    """The checkpoint folder of ``eagle:<spec>``: a local folder, or a hub id already in the local Hugging Face
    cache (never downloaded); ValueError saying which was tried."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec.count("/") == 1 and not spec.startswith(("/", ".", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec, local_files_only=True))
        except Exception:  # noqa: BLE001 - any hub failure means: not available offline
            raise ValueError(
                f"EAGLE checkpoint {spec!r}: no such folder, and not in the local Hugging Face cache "
                "(rooflens never downloads it: fetch it first, or give a local folder)"
            ) from None
    raise ValueError(f"EAGLE checkpoint {spec!r}: no such folder")


def read_checkpoint(folder: Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """(config, state dict on the CPU) of an EAGLE-1 folder; ValueError naming what is missing."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"EAGLE checkpoint {folder}: no config.json")
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise ValueError(f"EAGLE checkpoint {folder}: no weights ({' or '.join(WEIGHT_FILES)})")
    raw = json.loads(cfg_file.read_text())
    config = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
    config.num_hidden_layers = 1
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights), device="cpu")
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    return config, {k.removeprefix("model."): v for k, v in state.items()}


def check_shapes(folder: Path, state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """ValueError naming the first missing key or shape mismatch with what the target needs."""
    for key, shape in expected.items():
        if key not in state:
            raise ValueError(f"EAGLE checkpoint {folder}: missing key {key!r}")
        if tuple(state[key].shape) != shape:
            raise ValueError(
                f"EAGLE checkpoint {folder}: {key!r} has shape {list(state[key].shape)}, the target needs {list(shape)}"
            )


class EagleHead(nn.Module):
    """EAGLE-1's draft head on the target's embedding and full LM head (see the module docstring)."""

    def __init__(self, stack: LayerStack, config: LlamaConfig, state: dict[str, torch.Tensor], folder: Path):
        super().__init__()
        h, V = int(stack.config.hidden_size), int(stack.lm_head.weight.shape[0])
        if int(config.hidden_size) != h:
            raise ValueError(f"EAGLE checkpoint {folder}: hidden_size {config.hidden_size}, the target's is {h}")
        device = stack.lm_head.weight.device
        config._attn_implementation = stack.config._attn_implementation  # the target's attention kernel
        self.config = config
        self.fc = nn.Linear(2 * h, h, bias="fc.bias" in state, device=device, dtype=torch.float32)
        self.layer = LlamaDecoderLayer(config, layer_idx=0).to(device=device, dtype=torch.float32)
        self.layer.input_layernorm = nn.Identity()  # EAGLE-1's layer 0 has none
        self.rotary = LlamaRotaryEmbedding(config).to(device)
        expected = {f"fc.{k}": tuple(v.shape) for k, v in self.fc.state_dict().items()}
        expected |= {f"layers.0.{k}": tuple(v.shape) for k, v in self.layer.state_dict().items()}
        if "embed_tokens.weight" in state:
            expected["embed_tokens.weight"] = (V, h)
        check_shapes(folder, state, expected)
        with torch.no_grad():
            self.fc.load_state_dict({k[3:]: state[k].float() for k in expected if k.startswith("fc.")})
            self.layer.load_state_dict({k[9:]: state[k].float() for k in expected if k.startswith("layers.0.")})
        self.register_buffer("vocab_ids", torch.arange(V, device=device))
        self.register_buffer("head_rows", torch.empty(0), persistent=False)
        self.folder = folder
        self.bind(stack)

    def bind(self, stack: LayerStack) -> EagleHead:
        self.head_rows = stack.lm_head.weight.detach().float()
        return self

    @property
    def vocab_size(self) -> int:
        return int(self.vocab_ids.numel())

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def features(
        self, embeds: torch.Tensor, prev_hidden: torch.Tensor, position_ids: torch.Tensor, cache: Any = None
    ) -> torch.Tensor:
        """The head's output features [B, T, h] for pairs (embedding of x_{t+1}, normed target hidden of t)."""
        x = self.fc(torch.cat([embeds.float(), prev_hidden.float()], dim=-1))
        mask = create_causal_mask(
            config=self.config, inputs_embeds=x, attention_mask=None, past_key_values=cache, position_ids=position_ids
        )
        return self.layer(
            x,
            attention_mask=mask,
            position_embeddings=self.rotary(x, position_ids=position_ids),
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
        )

    def forward(
        self, embeds: torch.Tensor, prev_hidden: torch.Tensor, position_ids: torch.Tensor, cache: Any = None
    ) -> torch.Tensor:
        """Full-vocabulary logits [B, T, V]: the target's LM head on the features, no norm (EAGLE-1)."""
        return self.features(embeds, prev_hidden, position_ids, cache) @ self.head_rows.T

    def weight_elements(self) -> int:
        """Weights one draft step reads: fc, the decoder layer and the full LM head."""
        own = sum(p.numel() for p in self.fc.parameters()) + sum(p.numel() for p in self.layer.parameters())
        return own + int(self.head_rows.numel())


def load_eagle(stack: LayerStack, spec: str) -> EagleHead:
    """The EAGLE-1 head of ``spec`` (a folder, or a cached hub id) for the target ``stack``, in eval mode."""
    folder = resolve_folder(spec)
    config, state = read_checkpoint(folder)
    V = int(stack.lm_head.weight.shape[0])
    if int(getattr(config, "vocab_size", V)) != V:
        raise ValueError(f"EAGLE checkpoint {folder}: vocab_size {config.vocab_size}, the target's is {V}")
    return EagleHead(stack, config, state, folder).eval().requires_grad_(False)


def checkpoint_stamp(spec: str) -> str:
    """What keys a training on this checkpoint: the folder and its weight file's size and modification time."""
    try:
        folder = resolve_folder(spec)
    except ValueError:
        return "missing"
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        return "missing"
    st = weights.stat()
    return f"{folder.resolve()}:{weights.name}:{st.st_size}:{st.st_mtime_ns}"
