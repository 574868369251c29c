"""Bundles: one directory that fully describes and holds a trained VITAL model.

Layout::

    BUNDLE/
      vital.yaml               resolved VitalConfig
      manifest.json            versions, sha256 of every file, how it was made
      backbone/                Qwen3-VL weights + config, tokenizer files, preprocessor_config.json
                               (absent when the bundle references `backbone.path` + an adapter)
      adapter/                 peft LoRA adapter (only in unmerged bundles)
      scaffold.safetensors     visual projector, pj_in, auxiliary decoder (optional)
      scaffold.json            the decoder's Qwen3 config and head sizes (optional)

Loading without the scaffolding reads neither scaffold file and allocates none of it.
Writes go to a temporary sibling directory that is renamed into place, so a crash never
leaves a half-written bundle under the final name.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.initialization import no_init_weights

from vital_core.config import VitalConfig
from vital_core.heads import Scaffold, build_projector
from vital_core.lora import merge_lora
from vital_core.model import DTYPES, VitalModel, load_backbone
from vital_core.preprocess import load_image_processor, save_image_processor
from vital_core.tokenizer import load_tokenizer

CONFIG_FILE = "vital.yaml"
MANIFEST_FILE = "manifest.json"
SCAFFOLD_FILE = "scaffold.safetensors"
SCAFFOLD_META = "scaffold.json"
FORMAT_VERSION = 1


class BundleError(RuntimeError):
    """A bundle directory that is missing, incomplete or corrupt."""


def save_bundle(
    model: VitalModel,
    path: str | Path,
    *,
    merged: bool = True,
    scaffold: bool = True,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` as a bundle at `path` (atomically).

    Args:
        merged: fold LoRA into the saved backbone; False saves the base backbone (or only a
            reference to `backbone.path`) plus the adapter.
        scaffold: include the scaffolding heads if the model has them.
        provenance: free-form facts about how the bundle was made (command, seed, scores).
        state: the model's full state dict ("backbone.…", "scaffold.…") to write instead of the live
            modules' tensors (e.g. gathered from FSDP shards); the modules still give configs.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise BundleError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write(model, tmp, merged=merged, scaffold=scaffold, provenance=provenance or {}, state=state)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write(
    model: VitalModel, out: Path, *, merged: bool, scaffold: bool, provenance: dict, state: dict | None = None
) -> None:
    from peft import PeftModel

    if state is not None:
        bb_state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        sc_state = {k[len("scaffold.") :]: v for k, v in state.items() if k.startswith("scaffold.")}
    else:
        bb_state = model.backbone.state_dict()
        sc_state = model.scaffold.state_dict() if model.scaffold is not None else {}
    has_adapter = isinstance(model.backbone, PeftModel)
    config = model.config
    if has_adapter and not merged:
        model.backbone.save_pretrained(out / "adapter")
    if merged or not config.backbone.path:
        # Full weights, streamed shard by shard from the live state dict (no copy of the backbone):
        # LoRA folded in fp32 and cast once (merged), or the base the adapter applies to (unmerged).
        write_backbone(
            bb_state,
            model.core,
            out / "backbone",
            lora_scaling=config.lora.alpha / config.lora.r if merged and has_adapter else None,
            dtype=DTYPES[config.backbone.dtype],
        )
        model.tokenizer.save_pretrained(out / "backbone")
        save_image_processor(model.processor, out / "backbone")
    if scaffold and model.scaffold is not None:
        if model.scaffold.decoder.config.tie_word_embeddings:
            sc_state = {k: v for k, v in sc_state.items() if k != "decoder.lm_head.weight"}  # re-tied on load
        save_file({k: v.detach().cpu().contiguous() for k, v in sc_state.items()}, out / SCAFFOLD_FILE)
        meta = {
            "decoder_config": model.scaffold.decoder.config.to_dict(),
            "hidden_size": model.hidden_size,
            "encoder_dim": model.scaffold.vp.w2.out_features,
            "vp_dropout": model.scaffold.vp.drop.p,
            "vp_variant": model.config.heads.vp_variant,
        }
        (out / SCAFFOLD_META).write_text(json.dumps(meta, indent=2))
    config.to_yaml(out / CONFIG_FILE)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": config.name,
        "preset": config.preset,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "merged": bool(merged or not has_adapter),
        "versions": _versions(),
        "provenance": provenance,
        "files": {
            str(p.relative_to(out)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
            for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != MANIFEST_FILE
        },
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def load_bundle(
    path: str | Path,
    *,
    scaffold: bool = False,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    merge: bool = True,
    verify: bool = False,
) -> VitalModel:
    """Load a bundle; the scaffolding is read only when `scaffold=True`.

    Args:
        dtype: override the config's weight dtype (e.g. bfloat16 on GPU).
        merge: fold an adapter into the backbone (serving); False keeps LoRA separate (training).
        verify: check sha256 of every file that is read against the manifest.
    """
    path = Path(path)
    config = read_config(path)
    manifest = read_manifest(path)
    if verify:
        skip = () if scaffold else (SCAFFOLD_FILE, SCAFFOLD_META)
        verify_bundle(path, skip=skip, manifest=manifest)
    if dtype:
        config.backbone.dtype = dtype
    torch_dtype = DTYPES[config.backbone.dtype]
    bdir = path / "backbone"
    if bdir.is_dir():
        from transformers import Qwen3VLForConditionalGeneration

        core = Qwen3VLForConditionalGeneration.from_pretrained(
            bdir,
            local_files_only=True,
            dtype=torch_dtype,
            attn_implementation=config.backbone.attn_implementation,
        )
        tokenizer = load_tokenizer(bdir)
        processor = load_image_processor(
            bdir, config.backbone.image_max_pixels, config.backbone.image_min_pixels
        )
        core = core.to(device)
    elif config.backbone.path:
        core, tokenizer, processor = load_backbone(config, device)
    else:
        raise BundleError(f"{path}: no backbone/ directory and no backbone.path in {CONFIG_FILE}")
    core.eval()
    for p in core.parameters():
        p.requires_grad_(False)
    backbone: nn.Module = core
    if (path / "adapter").is_dir():
        from peft import PeftModel

        backbone = PeftModel.from_pretrained(core, path / "adapter", is_trainable=not merge)
        if merge:
            backbone = merge_lora(backbone)
    model = VitalModel(config, backbone, tokenizer, processor)
    if scaffold:
        model.scaffold = load_scaffold(path, device=device)
    return model


def load_scaffold(path: str | Path, device: str | torch.device = "cpu") -> Scaffold:
    """Read only the scaffolding of a bundle (for /explain or to resume training)."""
    path = Path(path)
    if not (path / SCAFFOLD_FILE).is_file():
        raise BundleError(f"{path}: this bundle has no scaffolding ({SCAFFOLD_FILE}); /explain needs it")
    try:
        meta = json.loads((path / SCAFFOLD_META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path / SCAFFOLD_META}: unreadable ({exc})") from exc
    dec_cfg = dict(meta["decoder_config"])
    # Skip random init: every weight is overwritten from the file (buffers such as RoPE's
    # inv_freq are computed normally, which a meta-device build would not do).
    with no_init_weights(), torch.device(device):
        decoder = Qwen3ForCausalLM(Qwen3Config(**_hf_kwargs(dec_cfg)))
        sc = Scaffold(
            vp=build_projector(
                meta["hidden_size"],
                meta["encoder_dim"],
                meta.get("vp_dropout", 0.1),
                meta.get("vp_variant", "res_mlp_ln"),
            ),
            pj_in=nn.Linear(meta["hidden_size"], decoder.config.hidden_size),
            decoder=decoder,
        )
    try:
        state = load_file(path / SCAFFOLD_FILE, device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise BundleError(f"{path / SCAFFOLD_FILE}: unreadable ({exc})") from exc
    missing = set(sc.state_dict()) - set(state)
    # tied lm_head is not stored separately; everything else must be there
    missing.discard("decoder.lm_head.weight")
    if missing:
        raise BundleError(f"{path / SCAFFOLD_FILE}: missing tensors {sorted(missing)[:5]}")
    sc.load_state_dict(state, strict=False)
    if decoder.config.tie_word_embeddings:
        decoder.tie_weights()
    return sc.eval()


def read_config(path: str | Path) -> VitalConfig:
    """The resolved config stored in a bundle."""
    f = Path(path) / CONFIG_FILE
    if not f.is_file():
        raise BundleError(f"{path}: not a VITAL bundle (no {CONFIG_FILE})")
    return VitalConfig.from_yaml(f)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The bundle's manifest.json."""
    f = Path(path) / MANIFEST_FILE
    if not f.is_file():
        raise BundleError(f"{path}: no {MANIFEST_FILE}")
    return json.loads(f.read_text())


def verify_bundle(path: str | Path, skip: tuple[str, ...] = (), manifest: dict | None = None) -> list[str]:
    """Check every listed file's size and sha256; raise BundleError on the first mismatch."""
    path = Path(path)
    manifest = manifest or read_manifest(path)
    checked = []
    for rel, info in manifest["files"].items():
        if rel in skip:
            continue
        f = path / rel
        if not f.is_file():
            raise BundleError(f"{path}: {rel} is listed in the manifest but missing")
        if f.stat().st_size != info["bytes"] or _sha256(f) != info["sha256"]:
            raise BundleError(f"{path}: {rel} does not match its manifest checksum")
        checked.append(rel)
    return checked


def backbone_key(name: str) -> str | None:
    """A (peft-wrapped) backbone state-dict key → its name in the HF checkpoint; None for LoRA tensors."""
    if ".lora_" in name:
        return None
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def write_backbone(
    state: dict[str, torch.Tensor],
    core: nn.Module,
    out: str | Path,
    *,
    lora_scaling: float | None = None,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = 2 << 30,
) -> list[str]:
    """Write a backbone state dict as sharded HF safetensors + index, config and generation config.

    `state` may hold peft names (`...q_proj.base_layer.weight`, `...lora_A.default.weight`): with
    `lora_scaling`, each adapted weight is written as (W + scaling·B·A) computed in fp32 and cast once to
    `dtype`; without, LoRA tensors are dropped. Tensors are converted one at a time and a shard is
    written as soon as it reaches `max_shard_bytes`, so peak memory is the model plus one shard.
    Returns the shard file names.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tied = bool(getattr(core.config, "tie_word_embeddings", False))
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    weight_map: dict[str, int] = {}
    total = 0
    names: list[str] = []

    def flush() -> None:
        nonlocal size
        if shards[-1]:
            name = f".shard-{len(names):05d}.safetensors"
            save_file(shards[-1], out / name, metadata={"format": "pt"})
            names.append(name)
            shards[-1] = {}
            size = 0

    for key, t in state.items():
        hf = backbone_key(key)
        if hf is None or (tied and hf == "lm_head.weight"):
            continue
        if lora_scaling is not None and ".base_layer." in key:
            prefix = key[: key.index(".base_layer.")]
            a = state.get(f"{prefix}.lora_A.default.weight")
            b = state.get(f"{prefix}.lora_B.default.weight")
            if a is not None and b is not None and key.endswith(".weight"):
                t = t.float() + lora_scaling * (b.float() @ a.float())  # (out, in), fp32
        t = t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype).contiguous()
        shards[-1][hf] = t
        weight_map[hf] = len(names)
        size += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
        if size >= max_shard_bytes:
            flush()
    flush()
    n = len(names)
    final = (
        ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    for tmp, name in zip(names, final):
        os.replace(out / tmp, out / name)
    if n > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {k: final[i] for k, i in weight_map.items()},
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    cfg = copy.deepcopy(core.config)
    cfg.dtype = dtype
    cfg.save_pretrained(out)
    gen = getattr(core, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(out)
    return final


def _hf_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    drop = {"architectures", "transformers_version", "model_type", "_name_or_path", "torch_dtype", "dtype"}
    return {k: v for k, v in cfg.items() if k not in drop}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import peft
    import transformers

    from vital_core import __version__

    return {
        "vital": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


def refresh_manifest(path: str | Path, provenance: dict[str, Any] | None = None) -> None:
    """Checksum files added to a bundle after it was saved, and merge `provenance` into the manifest."""
    path = Path(path)
    man = read_manifest(path)
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_file() and rel != MANIFEST_FILE:
            man["files"][rel] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    if provenance:
        man.setdefault("provenance", {}).update(provenance)
    tmp = path / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(man, indent=2))
    os.replace(tmp, path / MANIFEST_FILE)
