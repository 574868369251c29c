"""Training-time scaffolding: visual projector, pj_in, auxiliary text decoder, and their losses.

None of this is loaded for answering. `/explain` re-attaches it to read latents back as
sentences (decoder) and as points in the medical encoder's feature space (projector).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from vital_core.config import VitalConfig
from vital_core.preprocess import ANSWER_STOP


def unit_scale_norm(d_out: int) -> nn.LayerNorm:
    """The projectors' output LayerNorm, its gain initialised to 1/sqrt(d_out) (bias 0).

    A LayerNorm output has unit variance per component, so its L2 norm is sqrt(d_out): 34 for
    MedSigLIP's 1152, while the ROI targets are L2-normalised (norm 1). The paper's output LN "re-scales
    the projected output to match the L2-normalized scale of the vision encoder features" (eq. 5); with
    the default gain of 1 the L1 loss first spends its steps shrinking that gain and the projector
    stays near-uncorrelated with the targets (measured on vital-tiny: cosine 0.1 after 980 steps).
    This gain starts the output at norm 1, on the targets' sphere.
    """
    ln = nn.LayerNorm(d_out)
    with torch.no_grad():
        ln.weight.fill_(d_out**-0.5)
    return ln


class VisualProjector(nn.Module):
    """Norm-stabilised residual MLP (paper eq. 5): LN → x + Drop(GELU(W1 x)) → W2 → LN (unit-scale gain)."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.1):
        super().__init__()
        self.ln_in = nn.LayerNorm(d_in)
        self.w1 = nn.Linear(d_in, d_in)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.w2 = nn.Linear(d_in, d_out)
        self.ln_out = unit_scale_norm(d_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d_in) → (..., d_out)."""
        x = self.ln_in(h)
        x = x + self.drop(self.act(self.w1(x)))
        return self.ln_out(self.w2(x))


class AblationProjector(nn.Module):
    """The other projectors of the paper's §C.2 ablation (not the paper's model; see VisualProjector).

    linear: W2 h.  mlp: W2 Drop(GELU(W1 h)).  mlp_ln: LN(W2 Drop(GELU(W1 LN(h)))) (no residual).
    transformer: a pre-LN Transformer block on the single token (self-attention + residual MLP),
    then W2 and LN. Every variant names its last layer `w2` and keeps a `drop` module, like
    VisualProjector, so the output width and dropout read the same way.
    """

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.1, variant: str = "mlp"):
        super().__init__()
        if variant not in ("linear", "mlp", "mlp_ln", "transformer"):
            raise ValueError(f"unknown projector variant {variant!r}")
        self.variant = variant
        self.drop = nn.Dropout(dropout)
        ln = variant in ("mlp_ln", "transformer")
        self.ln_in = nn.LayerNorm(d_in) if ln else nn.Identity()
        self.w1 = nn.Linear(d_in, d_in) if variant != "linear" else None
        if variant == "transformer":
            heads = next(h for h in (8, 4, 2, 1) if d_in % h == 0)
            self.attn = nn.MultiheadAttention(d_in, heads, dropout=dropout, batch_first=True)
            self.ln_mlp = nn.LayerNorm(d_in)
        self.w2 = nn.Linear(d_in, d_out)
        self.ln_out = unit_scale_norm(d_out) if ln else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d_in) → (..., d_out)."""
        if self.variant == "linear":
            return self.w2(h)
        if self.variant == "transformer":
            x = h.reshape(-1, 1, h.shape[-1])  # (N, 1, d_in): one token per latent
            a = self.ln_in(x)
            x = x + self.attn(a, a, a, need_weights=False)[0]
            x = x + self.drop(F.gelu(self.w1(self.ln_mlp(x))))
            return self.ln_out(self.w2(x)).reshape(*h.shape[:-1], -1)
        x = self.drop(F.gelu(self.w1(self.ln_in(h))))
        return self.ln_out(self.w2(x))


def build_projector(d_in: int, d_out: int, dropout: float = 0.1, variant: str = "res_mlp_ln") -> nn.Module:
    """The visual projector for `variant` (res_mlp_ln is the paper's; the rest are §C.2 ablations)."""
    if variant == "res_mlp_ln":
        return VisualProjector(d_in, d_out, dropout)
    return AblationProjector(d_in, d_out, dropout, variant)


class Scaffold(nn.Module):
    """The three scaffolding modules trained beside LoRA and dropped for serving."""

    def __init__(self, vp: nn.Module, pj_in: nn.Linear, decoder: Qwen3ForCausalLM):
        super().__init__()
        self.vp = vp
        self.pj_in = pj_in
        self.decoder = decoder

    def semantic_loss(
        self, latents: torch.Tensor, step_ids: torch.Tensor, step_mask: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy of each step's sentence given pj_in(h_k) as a one-vector prefix.

        Args:
            latents: (B, K, H) latent states h_1..h_K.
            step_ids: (B, K, T) sentence tokens per step, right-padded, ending in EOS.
            step_mask: (B, K, T) 1 on real tokens.
            valid: (B, K) bool, steps that exist and have a sentence.
        Returns the mean over valid steps of each step's mean token cross-entropy (0 if none).
        """
        if not bool(valid.any()):
            return latents.sum() * 0.0
        ids, mask = step_ids[valid], step_mask[valid]  # (N, T)
        tok_loss = self.token_losses(latents[valid], ids, mask)
        per_step = tok_loss.sum(1) / mask.sum(1).clamp(min=1)
        return per_step.mean()

    def token_losses(self, h: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, T) teacher-forced cross-entropy of each sentence token given pj_in(h) as a one-vector prefix
        (0 on padding). h: (N, H) latents; ids, mask: (N, T) sentence tokens ending in EOS, right-padded."""
        h = h.to(self.pj_in.weight.dtype)  # in the head's dtype (the backbone may be bf16)
        prefix = self.pj_in(h).unsqueeze(1)  # (N, 1, Hd)
        emb = self.decoder.get_input_embeddings()(ids[:, :-1])  # (N, T-1, Hd)
        inputs = torch.cat([prefix.to(emb.dtype), emb], dim=1)  # (N, T, Hd)
        attn = torch.cat([mask.new_ones(mask.shape[0], 1), mask[:, :-1]], dim=1)
        logits = self.decoder(inputs_embeds=inputs, attention_mask=attn).logits  # (N, T, V)
        return F.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none") * mask

    def visual_loss(self, latents: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """L1 between VP(h_k) and the L2-normalised ROI target, mean over valid steps.

        Args:
            latents: (B, K, H).
            target: (B, D) shared target, or (B, K, D) per-step targets (paper §C.5).
            valid: (B, K) bool.
        """
        if not bool(valid.any()):
            return latents.sum() * 0.0
        pred = self.vp(latents[valid].to(_dtype(self.vp))).float()  # (N, D)
        tgt = target.unsqueeze(1).expand(-1, latents.shape[1], -1) if target.dim() == 2 else target
        tgt = F.normalize(tgt[valid].float(), dim=-1)  # (N, D)
        return (pred - tgt).abs().mean(-1).mean()

    @torch.inference_mode()
    def decode(
        self, latents: torch.Tensor, tokenizer: PreTrainedTokenizerBase, max_tokens: int = 48
    ) -> list[str]:
        """Greedy-decode one sentence per latent vector. latents: (N, H)."""
        dec = self.decoder
        stop = {tokenizer.convert_tokens_to_ids(ANSWER_STOP), tokenizer.eos_token_id}
        x = self.pj_in(latents.to(self.pj_in.weight.dtype)).unsqueeze(1).to(dec.dtype)  # (N, 1, Hd)
        out = dec(inputs_embeds=x, use_cache=True)
        past, done = out.past_key_values, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        tokens: list[list[int]] = [[] for _ in range(x.shape[0])]
        for _ in range(max_tokens):
            nxt = out.logits[:, -1].argmax(-1)  # (N,)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    if t in stop:
                        done[i] = True
                    else:
                        tokens[i].append(t)
            if bool(done.all()):
                break
            out = dec(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
            past = out.past_key_values
        return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


def _dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first parameter (what its inputs are cast to)."""
    return next(module.parameters()).dtype


def build_scaffold(
    config: VitalConfig, hidden_size: int, decoder: Qwen3ForCausalLM | None = None
) -> Scaffold:
    """Fresh scaffolding for a backbone of width `hidden_size` (decoder from path or config)."""
    if decoder is None:
        decoder = load_decoder(config)
    return Scaffold(
        vp=build_projector(
            hidden_size, config.encoder.hidden_size, config.heads.vp_dropout, config.heads.vp_variant
        ),
        pj_in=nn.Linear(hidden_size, decoder.config.hidden_size),
        decoder=decoder,
    )


def load_decoder(config: VitalConfig) -> Qwen3ForCausalLM:
    """The auxiliary decoder: Qwen3 from a local directory, or built from `decoder.arch`."""
    dc = config.decoder
    if dc.path:  # fp32 whatever the checkpoint's dtype: the decoder is trained (optimizer state in fp32)
        return Qwen3ForCausalLM.from_pretrained(dc.path, local_files_only=True, dtype=torch.float32)
    return Qwen3ForCausalLM(Qwen3Config(**dc.arch))


def encode_steps(
    steps: list[list[str]], tokenizer: PreTrainedTokenizerBase, k_max: int, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reasoning sentences → (B, k_max, T) ids and mask, and (B, k_max) has-sentence flags."""
    stop = tokenizer.convert_tokens_to_ids(ANSWER_STOP)
    pad = tokenizer.pad_token_id
    enc = [
        [tokenizer(s, add_special_tokens=False)["input_ids"][: max_tokens - 1] + [stop] for s in row[:k_max]]
        for row in steps
    ]
    width = max([len(s) for row in enc for s in row] or [1])
    ids = torch.full((len(steps), k_max, width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    has = torch.zeros((len(steps), k_max), dtype=torch.bool)
    for b, row in enumerate(enc):
        for k, s in enumerate(row):
            ids[b, k, : len(s)] = torch.tensor(s)
            mask[b, k, : len(s)] = 1
            has[b, k] = True
    return ids, mask, has
