"""The model runner: the only code that calls the model.

It runs the decoder's parts itself (token embeddings, rotary tables, attention masks, each decoder
layer, the final norm, the LM head), so one entry serves every use:

- prefill and decode (`run(ids, cache)`), logits for the last position or for all of them
  (verifying k drafted tokens in one pass);
- extending a cache at arbitrary positions with a custom attention mask (PIE's re-encoding of
  edited tokens between reused ones);
- stopping after layer L (`layers=L`): the hidden state there, no norm and no head, for probes,
  without touching the shared model config;
- early-exit decode steps (`decode_exit`): the exit controller is asked at each exit layer, and an
  exited token's skipped layers get K/V from the exited hidden state (`propagate`);
- self-speculative drafting: tokens through the lower layers only (`run_lower`), then the upper
  layers over all of them in one pass (`run_upper`), reusing the lower layers' K/V;
- batched decoding (`run_batch`): several requests' decode or verification steps in one pass,
  each over its own slot of a static KV pool (`batch_kv.py`), rows of different lengths.

On a CPU it gives the model's linear layers packed oneDNN weights (`kernels/cpu_linear.py`,
`SPLICE_CPU_LINEAR`): a one-token step gets cheaper, a pass that verifies a draft costs about
what a one-token step does, and each row's numbers do not depend on how many rows a pass has.

It supports the families whose transformers forward is exactly `XForCausalLM(model=XModel(
embed_tokens, rotary_emb, layers, norm), lm_head)` with nothing in between (`FAMILIES`: Llama,
Mistral, Qwen2, Qwen3, StableLM, and OpenELM-shaped models (`openelm.py`: per-layer head
counts); what the service loads, GGUF included; tested against
transformers' own forward). Families that scale embeddings or cap logits (Gemma, ...) are not
listed: for them `ModelRunner.supported` is False and only full-depth runs are possible (they call
the model whole).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from splice.completion.attention import CPU_NAME, NAME, use_cpu_attention, use_kernel_attention
from splice.completion.batch_kv import KVPool
from splice.completion.early_exit import EXIT, STOP, ExitHeads, ExitThresholds
from splice.kernels.cpu_linear import pack_linears

FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "stablelm", "openelm"})
# Families whose keys are k_proj (+ Qwen3's per-head k_norm) rotated over the whole head: state
# propagation computes their K/V directly. StableLM (partial rotary, optional q/k layer norms)
# runs its attention module instead.
_PLAIN_KV = frozenset({"llama", "mistral", "qwen2", "qwen3", "openelm"})


@dataclass
class RunOutput:
    hidden: torch.Tensor  # [1, Q, H]: after the last layer run (before the final norm)
    logits: torch.Tensor | None  # [Q', V] fp32 (Q' = 1 for "last", Q for "all"), None for "none"
    layers: int  # decoder layers run


@dataclass
class ExitStep:
    logits: torch.Tensor | None  # [V] fp32; None when the controller said Stop
    layers: int  # decoder layers run in full
    decision: str  # "exit", "stop" or "full"


class ModelRunner:
    """Runs one causal LM's decoder layer by layer (see the module docstring)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.config = model.config.get_text_config(decoder=True)
        decoder = getattr(model, "model", None)
        parts = ("embed_tokens", "rotary_emb", "layers", "norm")
        self.supported = (
            self.config.model_type in FAMILIES
            and decoder is not None
            and all(hasattr(decoder, p) for p in parts)
        )
        self.num_layers = int(self.config.num_hidden_layers)
        if not getattr(model, "_splice_linears_packed", False):  # once per model, not per runner
            pack_linears(model)
            setattr(model, "_splice_linears_packed", True)  # noqa: B010 (nn.Module's typed setattr)
        if self.supported:
            assert decoder is not None
            self.decoder: Any = decoder
            self.head = model.get_output_embeddings()
            types = getattr(self.config, "layer_types", None)
            self.layer_types: list[str] = list(types) if types else ["full_attention"] * self.num_layers
            self.sliding = "sliding_attention" in self.layer_types
        # Decode steps through the Triton decode-attention kernel where it runs (`attention.py`).
        self.kernel_attention = self.supported and use_kernel_attention(model)
        if not self.kernel_attention:
            use_cpu_attention(model)  # masked grouped-query passes without K/V copies on a CPU

    @torch.inference_mode()
    def run(
        self,
        ids: torch.Tensor,
        cache: DynamicCache,
        *,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        layers: int | None = None,
        logits: str | int = "last",
    ) -> RunOutput:
        """Run `ids` [1, Q] after what `cache` holds, appending their K/V to it.

        positions: [1, Q] (default: right after the cache); attention_mask: a 4D mask [1, 1, Q, K]
        (default: causal); layers: stop after this many decoder layers (default: all; then the
        final norm and the head run); logits: "last", "all", "none", or a number of positions
        (the last ones: a prompt's last token and a draft fed after it).
        """
        depth = self.num_layers if layers is None else layers
        if not 0 < depth <= self.num_layers:
            raise ValueError(f"layers must be in [1, {self.num_layers}], got {layers}")
        if isinstance(logits, int):
            if not 0 < logits <= ids.shape[1]:
                raise ValueError(f"logits must be in [1, {ids.shape[1]}] positions, got {logits}")
        elif logits not in ("last", "all", "none"):
            raise ValueError(f"logits must be 'last', 'all', 'none' or a count, got {logits!r}")
        keep = logits if isinstance(logits, int) else {"last": 1, "all": 0, "none": 1}[logits]  # 0: all
        if not self.supported:
            if depth != self.num_layers:
                raise ValueError(f"{type(self.model).__name__} cannot stop before its last layer here")
            out = self.model(
                input_ids=ids,
                position_ids=positions,
                attention_mask=attention_mask,
                cache=cache,
                use_cache=True,
                logits_to_keep=keep,
                output_hidden_states=True,
            )
            head = None if logits == "none" else out.logits[0].float()
            return RunOutput(out.hidden_states[-1], head, depth)

        hidden, masks, rotary, positions = self._inputs(ids, cache, positions, attention_mask)
        for index in range(depth):
            hidden = self._layer(index, hidden, masks, rotary, positions, cache)
        head = None
        if depth == self.num_layers and logits != "none":
            normed = self.decoder.norm(hidden[:, -keep:] if keep else hidden)
            head = self.head(normed)[0].float()
        return RunOutput(hidden, head, depth)

    @torch.inference_mode()
    def decode_exit(
        self, ids: torch.Tensor, cache: DynamicCache, heads: ExitHeads, thresholds: ExitThresholds
    ) -> ExitStep:
        """Decode `ids` [1, 1] with early exit: at each of `heads`' exit layers the controller
        picks Continue, Exit (this layer's lens + the LM head give the logits; the skipped layers
        get K/V from the exited hidden state) or Stop (the completion should end; the cache is
        completed the same way). Without a decision the last layer's logits are returned."""
        if not self.supported:
            raise ValueError(f"early exit needs a layer-by-layer runner; {self.config.model_type} runs whole")
        hidden, masks, rotary, positions = self._inputs(ids, cache, None, None)
        for index in range(self.num_layers):
            hidden = self._layer(index, hidden, masks, rotary, positions, cache)
            slot = heads.slot.get(index + 1)
            if slot is None:
                continue
            normed = self.decoder.norm(hidden[:, -1])  # [1, H]
            probs = torch.softmax(heads.decide(normed, slot).float(), dim=-1)[0]
            if thresholds.exit < 1.0 and probs[EXIT] >= thresholds.exit:
                logits = self.head(heads.lens(normed, slot))[0].float()
                self.propagate(hidden, cache, index + 1, masks, rotary)
                return ExitStep(logits, index + 1, "exit")
            if thresholds.stop < 1.0 and probs[STOP] >= thresholds.stop:
                self.propagate(hidden, cache, index + 1, masks, rotary)
                return ExitStep(None, index + 1, "stop")
        logits = self.head(self.decoder.norm(hidden[:, -1]))[0].float()
        return ExitStep(logits, self.num_layers, "full")

    @torch.inference_mode()
    def run_lower(self, ids: torch.Tensor, cache: DynamicCache, depth: int) -> torch.Tensor:
        """Self-speculative drafting: `ids` [1, Q] through the first `depth` layers only (their K/V
        appended; the layers above fall behind). Returns the hidden state there [1, Q, H]."""
        if not self.supported or self.sliding:
            raise ValueError("self-speculative drafting needs a layer-by-layer runner, no sliding windows")
        hidden, masks, rotary, positions = self._inputs(ids, cache, None, None)
        for index in range(depth):
            hidden = self._layer(index, hidden, masks, rotary, positions, cache)
        return hidden

    @torch.inference_mode()
    def run_upper(self, hidden: torch.Tensor, cache: DynamicCache, depth: int) -> torch.Tensor:
        """The rest of a self-speculative pass: `hidden` [1, Q, H] (the states `run_lower` left at
        `depth`, for the Q positions the layers above have not seen) through layers `depth`.. in one
        pass, then the norm and head: logits [Q, V]. The lower layers' K/V are the ones the draft
        computed: below the draft layer they are exactly what a full pass would compute."""
        past = cache.get_seq_length(depth)
        q = hidden.shape[1]
        positions = torch.arange(past, past + q, device=hidden.device).unsqueeze(0)
        causal = torch.ones(q, past + q, dtype=torch.bool, device=hidden.device).tril(diagonal=past)
        masks = {"full_attention": causal[None, None]}  # [1, 1, Q, past + Q]
        rotary = self.decoder.rotary_emb(hidden, position_ids=positions)
        for index in range(depth, self.num_layers):
            hidden = self._layer(index, hidden, masks, rotary, positions, cache)
        return self.head(self.decoder.norm(hidden))[0].float()

    @torch.inference_mode()
    def run_batch(self, pool: KVPool, slots: list[int], rows: list[list[int]]) -> list[torch.Tensor]:
        """One forward pass over several requests' slots of `pool` (`batch_kv.py`): row b feeds
        the tokens `rows[b]` (one to decode, or one and a draft to verify) after what its slot
        holds. Returns each row's logits [len(rows[b]), V] fp32. The slots' lengths are left to
        the caller (`KVPool.advance`), which knows how many fed tokens each keeps."""
        if not self.supported or self.sliding:
            raise ValueError("batched decoding needs a layer-by-layer runner without sliding windows")
        implementation = getattr(self.config, "_attn_implementation", "sdpa")
        if implementation not in ("sdpa", "eager", NAME, CPU_NAME):
            raise ValueError(f"batched decoding needs a 4D attention mask; {implementation!r} takes none")
        view = pool.batch(slots, [len(r) for r in rows])
        device = pool.keys[0].device
        # Padding repeats each row's last token; its outputs are dropped and its K/V overwritten.
        padded = [r + r[-1:] * (view.width - len(r)) for r in rows]
        hidden = self.decoder.embed_tokens(torch.tensor(padded, dtype=torch.long, device=device))
        mask = view.mask()
        if implementation == "eager":  # eager attention adds its mask
            mask = torch.where(mask, 0.0, torch.finfo(hidden.dtype).min).to(hidden.dtype)
        masks = {"full_attention": mask}
        rotary = self.decoder.rotary_emb(hidden, position_ids=view.positions)
        # One token per row: the kernel reads each row's valid length instead of the mask.
        lengths = {"splice_lengths": view.starts + 1} if self.kernel_attention and view.width == 1 else {}
        for index in range(self.num_layers):
            hidden = self._layer(index, hidden, masks, rotary, view.positions, view, **lengths)  # type: ignore[arg-type]
        logits = self.head(self.decoder.norm(hidden)).float()  # [B, Q, V]
        return [logits[b, : len(r)] for b, r in enumerate(rows)]

    def propagate(
        self, hidden: torch.Tensor, cache: DynamicCache, start: int, masks: dict[str, Any], rotary: Any
    ) -> None:
        """State propagation: append K/V for layers `start`.. computed from `hidden` [1, Q, H] as
        their input, so the cache stays full-depth after an exit (only the K/V projections run
        for plain attention; families with their own attention math run the attention module)."""
        cos, sin = rotary
        for index in range(start, self.num_layers):
            layer = self.decoder.layers[index]
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            if self.config.model_type not in _PLAIN_KV:
                mask = masks[self.layer_types[index]]
                attn(x, attention_mask=mask, position_embeddings=rotary, cache=cache, use_cache=True)
                continue
            shape = (*x.shape[:-1], -1, attn.head_dim)
            key = attn.k_proj(x).view(shape)
            if hasattr(attn, "k_norm"):  # Qwen3 normalises keys per head before the rotation
                key = attn.k_norm(key)
            key = key.transpose(1, 2)  # [1, KV, Q, D]
            value = attn.v_proj(x).view(shape).transpose(1, 2)
            _, key = apply_rotary_pos_emb(key, key, cos, sin)
            cache.update(key, value, index)

    def _inputs(
        self,
        ids: torch.Tensor,
        cache: DynamicCache,
        positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, Any], Any, torch.Tensor]:
        """Embeddings [1, Q, H], masks per layer type, rotary tables and positions for `ids`."""
        hidden = self.decoder.embed_tokens(ids)
        if positions is None:
            start = cache.get_seq_length()
            positions = torch.arange(start, start + ids.shape[1], device=ids.device).unsqueeze(0)
        mask_args = {
            "config": self.config,
            "inputs_embeds": hidden,
            "attention_mask": attention_mask,
            "cache": cache,
            "position_ids": positions,
        }
        masks = {"full_attention": create_causal_mask(**mask_args)}
        if self.sliding:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_args)
        rotary = self.decoder.rotary_emb(hidden, position_ids=positions)
        return hidden, masks, rotary, positions

    def _layer(
        self,
        index: int,
        hidden: torch.Tensor,
        masks: dict[str, Any],
        rotary: Any,
        positions: torch.Tensor,
        cache: DynamicCache,
        **attention: Any,
    ) -> torch.Tensor:
        out: torch.Tensor = self.decoder.layers[index](
            hidden,
            attention_mask=masks[self.layer_types[index]],
            position_embeddings=rotary,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            **attention,
        )
        return out
