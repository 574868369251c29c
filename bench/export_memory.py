"""Peak host memory of writing a merged backbone: the old deep-copy path vs the streaming writer.

Each variant runs in a fresh process: load a bf16 Qwen3-VL checkpoint (the 8B layout — real vocabulary
size, untied LM head — at small widths), attach LoRA with non-zero B, then write the merged backbone.
A sampler thread reads the process's RSS every 2 ms; the figure is (peak RSS − RSS after imports) / bytes
of one bf16 copy of the weights, i.e. how many copies of the backbone the load + export holds at once.

    python bench/export_memory.py            # → bench/results/export-memory.{json,md}
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _build(ckpt: Path) -> int:
    """A bf16 Qwen3-VL checkpoint with the 8B's vocabulary and untied head; returns its weight bytes."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    arch = {
        "text_config": {
            "vocab_size": 151936,
            "hidden_size": 512,
            "intermediate_size": 1536,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [16, 8, 8],
                "mrope_interleaved": True,
            },
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_heads": 2,
            "patch_size": 16,
            "out_hidden_size": 512,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1],
        },
        "tie_word_embeddings": False,
    }
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**arch)).to(torch.bfloat16)
    model.save_pretrained(ckpt, max_shard_size="64MB")
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _variant(ckpt: str, out: str, variant: str) -> dict:
    """Run in a child process: load, attach LoRA, export; report RSS figures."""
    import copy

    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from vital_core.bundle import write_backbone
    from vital_core.config import LoraConfig
    from vital_core.lora import attach_lora, merge_lora

    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    core = Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.bfloat16, local_files_only=True)
    lora = LoraConfig(r=8, alpha=16)
    model = attach_lora(core, lora)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    loaded = _rss() - base
    if variant == "deepcopy":  # what export and `bundle init` did before: copy, merge in bf16, save
        merge_lora(copy.deepcopy(model)).save_pretrained(out)
    else:
        write_backbone(
            model.state_dict(),
            core,
            out,
            lora_scaling=lora.alpha / lora.r,
            dtype=torch.bfloat16,
            max_shard_bytes=64 << 20,
        )
    stop.set()
    th.join()
    return {"loaded_bytes": loaded, "peak_bytes": max(peak[0], _rss()) - base}


def main() -> None:
    """Build the checkpoint once, run both variants in fresh processes, write JSON + a table."""
    if len(sys.argv) == 4:  # child
        print(json.dumps(_variant(*sys.argv[1:])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        weight_bytes = _build(ckpt)
        rows = {}
        for variant in ("deepcopy", "stream"):
            out = subprocess.run(
                [sys.executable, __file__, str(ckpt), str(Path(tmp) / variant), variant],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["copies"] = r["peak_bytes"] / weight_bytes
            rows[variant] = r
    result = {
        "machine": f"{platform.node()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPUs",
        "weights_bf16_bytes": weight_bytes,
        "variants": rows,
        "stream_vs_deepcopy_peak": rows["stream"]["peak_bytes"] / rows["deepcopy"]["peak_bytes"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export-memory.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"machine: {result['machine']}; one bf16 copy of the weights = {weight_bytes / 2**20:.0f} MiB",
        "",
        "| variant | RSS after load (MiB) | peak RSS, load + export (MiB) | bf16 copies held at peak |",
        "|---|---|---|---|",
    ]
    for v, r in rows.items():
        lines.append(
            f"| {v} | {r['loaded_bytes'] / 2**20:.0f} | {r['peak_bytes'] / 2**20:.0f} | {r['copies']:.2f} |"
        )
    lines.append(f"\nstream / deepcopy peak: {result['stream_vs_deepcopy_peak']:.2f}")
    (RESULTS / "export-memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
