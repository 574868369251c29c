"""The trainer: finite losses, overfitting one batch, curriculum phases, resume equivalence, torchrun."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from training.data.batches import in_phase, k_batches, per_step_targets
from training.recipe import Recipe, phases_for


def _recipe(tmp_path: Path, phantom_dir: Path, roi_store: Path, **extra) -> Path:
    data = {
        "name": "t",
        "output_dir": str(tmp_path / "run"),
        "model": {"preset": "tiny", "overrides": {"lora": {"dropout": 0.0}}},
        "data": {
            "manifest": str(phantom_dir / "manifest.jsonl"),
            "roi_store": str(roi_store),
            "max_samples": 48,
        },
        "batch_size": 4,
        "curriculum": {"kind": "three_phase", "epochs": [0.5, 0.5, 0.5]},
        "checkpoint": {"every_steps": 3, "keep_last": 2},
        "log_every": 1,
        "optim": {"lr": 5e-3},
    }
    for key, value in extra.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def test_recipes_in_the_repo_load():
    # the paper's λ_vis = 0.1; the tiny latent recipe documents its own 1.0 (measured on the validation split)
    for f, lambda_vis in (
        ("configs/tiny.yaml", 1.0),
        ("configs/tiny-stage0.yaml", 0.1),
        ("configs/qwen3-vl-8b.yaml", 0.1),
    ):
        r = Recipe.from_yaml(Path(__file__).parents[2] / f)
        assert r.loss.lambda_sem == 1.0 and r.loss.lambda_vis == lambda_vis and r.optim.grad_clip == 1.0
    paper = Recipe.from_yaml(Path(__file__).parents[2] / "configs/qwen3-vl-8b.yaml")
    assert [p.epochs for p in phases_for(paper.curriculum)] == [5, 5, 10]


def test_recipe_errors_and_overrides(tmp_path):
    from vital_core.config import ConfigError

    f = tmp_path / "r.yaml"
    f.write_text("name: x\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match="batchsize"):
        Recipe.from_yaml(f)
    f.write_text("name: x\n")
    r = Recipe.from_yaml(f, ["optim.lr=0.5", "loss.visual=false", "curriculum.kind=reverse"])
    assert r.optim.lr == 0.5 and r.loss.visual is False and r.curriculum.kind == "reverse"


def test_curricula_phase_selection(phantom_samples):
    spec = Recipe().curriculum
    three = phases_for(spec)
    assert [(p.min_k, p.max_k, p.epochs) for p in three] == [(1, 1, 5), (0, 2, 5), (0, 99, 10)]
    ks = lambda phase: {len(s.reasoning) for s in in_phase(phantom_samples, phase.min_k, phase.max_k)}  # noqa: E731
    assert ks(three[0]) == {1} and ks(three[1]) == {1, 2} and ks(three[2]) == {1, 2, 3, 4}
    spec.kind = "two_phase"
    assert [(p.max_k, p.epochs) for p in phases_for(spec)] == [(2, 10), (99, 10)]
    spec.kind = "full_mix"
    assert [(p.max_k, p.epochs) for p in phases_for(spec)] == [(99, 20)]
    spec.kind = "reverse"
    assert [(p.min_k, p.max_k) for p in phases_for(spec)] == [(0, 99), (0, 2), (1, 1)]


def test_k_batches_share_k_and_split_across_ranks(phantom_samples):
    batches = k_batches(phantom_samples, 8, seed=3)
    assert all(len({len(phantom_samples[i].reasoning) for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(phantom_samples)))
    assert (
        k_batches(phantom_samples, 8, seed=3) == batches and k_batches(phantom_samples, 8, seed=4) != batches
    )
    r0, r1 = (k_batches(phantom_samples, 8, 3, rank=r, world=2) for r in (0, 1))
    assert len(r0) == len(r1)
    # the K of every step is the same on both ranks (same collectives), and together they see every sample
    k_of = lambda b: len(phantom_samples[b[0]].reasoning)  # noqa: E731
    assert [k_of(b) for b in r0] == [k_of(b) for b in r1]
    assert {i for b in r0 + r1 for i in b} == set(range(len(phantom_samples)))
    # 2 ranks x 1 batch see exactly what 1 rank x grad_accum 2 sees
    flat = k_batches(phantom_samples, 8, 3, group=2)
    assert [b for pair in zip(r0, r1) for b in pair] == flat


def test_per_step_targets_interpolate_to_the_roi():
    roi = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    glob = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    t = per_step_targets(roi, glob, 4)
    assert t.shape == (2, 4, 8)
    torch.testing.assert_close(t[:, -1], roi)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2, 4))
    cos_g = (t * glob[:, None]).sum(-1)  # (2, 4): cosine of each step's target with g
    assert (cos_g[:, :-1] > cos_g[:, 1:]).all()  # each step moves further from g, towards the ROI


def test_few_steps_finite_and_phases_respect_k(tmp_path, phantom_dir, roi_store):
    from training.trainer import Trainer

    result = Trainer(Recipe.from_yaml(_recipe(tmp_path, phantom_dir, roi_store))).run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor([r["total"], r["task"]])).all() for r in rows)
    assert {r["k"] for r in rows if r["phase"] == "phase1"} == {1}
    assert {r["k"] for r in rows if r["phase"] == "phase2"} <= {1, 2}
    assert any("sem" in r and "vis" in r for r in rows)
    assert result["steps"] == rows[-1]["step"]
    assert len(list((tmp_path / "run").glob("ckpt-*"))) == 2  # keep_last
    assert (tmp_path / "run" / "final.safetensors").is_file()


def test_single_batch_overfits(phantom_dir, roi_store):
    """On one K=2 batch the whole objective (through both latent steps) can be driven far down."""
    from training.data.batches import RoiTargets, load_batch
    from training.data.manifest import load_manifest
    from training.trainer import TrainStep, build_training_model
    from vital_core.heads import encode_steps
    from vital_core.preprocess import encode_answers, encode_prompts

    recipe = Recipe.from_dict({"model": {"preset": "tiny", "overrides": {"lora": {"dropout": 0.0}}}})
    samples = [s for s in load_manifest(phantom_dir / "manifest.jsonl") if len(s.reasoning) == 2][:4]
    model = build_training_model(recipe, torch.device("cpu"))
    model.scaffold.vp.drop.p = 0.0
    # A random tiny backbone cannot be steered through LoRA alone in a few steps (that is what stage 0
    # is for), so this test trains it too: the point is that every loss flows through the loop.
    for p in model.core.parameters():
        p.requires_grad_(True)
    batch = load_batch(samples, range(4), 2, RoiTargets(str(roi_store), [s.id for s in samples]))
    tok = model.tokenizer
    prompts = encode_prompts(batch.images, [s.question for s in samples], tok, model.processor)
    ans, am = encode_answers([s.answer for s in samples], tok)
    sid, sm, sh = encode_steps([list(s.reasoning) for s in samples], tok, 2, 48)
    step = TrainStep(model, recipe)
    opt = torch.optim.AdamW(
        [
            {"params": list(model.core.parameters()), "lr": 3e-3},
            {"params": list(model.scaffold.parameters()), "lr": 3e-3},
        ]
    )
    first = None
    for _ in range(80):
        losses = step(prompts, 2, ans, am, sid, sm, sh, batch.targets)
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    last = {k: v.item() for k, v in losses.items()}
    assert last["total"] < 0.1 * first["total"], (first, last)
    assert last["task"] < 0.1 * first["task"] and last["sem"] < 0.1 * first["sem"], (first, last)
    assert last["vis"] < 0.5 * first["vis"], (first, last)


def test_resume_equals_uninterrupted(tmp_path, phantom_dir, roi_store):
    from training.trainer import Trainer

    full = Trainer(Recipe.from_yaml(_recipe(tmp_path / "a", phantom_dir, roi_store))).run()
    recipe_b = _recipe(tmp_path / "b", phantom_dir, roi_store)
    stopped = Trainer(Recipe.from_yaml(recipe_b), stop_after_steps=7).run()
    assert stopped["stopped_at"] == 7
    ckpts = sorted((tmp_path / "b" / "run").glob("ckpt-*"))
    assert ckpts and not (tmp_path / "b" / "run" / "final.safetensors").exists()
    resumed = Trainer(Recipe.from_yaml(recipe_b), mode="resume").run()  # the last checkpoint (step 6)
    assert resumed["steps"] == full["steps"]
    a = load_file(tmp_path / "a" / "run" / "final.safetensors")
    b = load_file(tmp_path / "b" / "run" / "final.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_ablation_switches(tmp_path, phantom_dir, roi_store):
    from training.trainer import Trainer

    f = _recipe(
        tmp_path,
        phantom_dir,
        roi_store,
        **{"loss.semantic": False, "loss.visual_target": "per_step", "curriculum.epochs": [0.25, 0.25, 0.25]},
    )
    Trainer(Recipe.from_yaml(f)).run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("sem" not in r for r in rows) and any("vis" in r for r in rows)


def test_per_hop_targets_train_each_step_on_its_own_mask(tmp_path, phantom_dir, roi_store):
    """visual_target=per_hop: multi-hop batches get a different target per step; the run trains and logs L_vis."""
    from training.data.batches import RoiTargets, load_batch, roi_keys
    from training.data.manifest import load_manifest
    from training.trainer import Trainer

    samples = [s for s in load_manifest(phantom_dir / "manifest.jsonl") if len(set(s.step_roi_keys())) > 1][
        :2
    ]
    batch = load_batch(
        samples, range(2), 3, RoiTargets(str(roi_store), roi_keys(samples, True)), per_hop=True
    )
    assert batch.targets.shape[:2] == (2, 3)
    for row, s in enumerate(samples):  # steps whose hop masks differ get different targets, equal ones equal
        masks = [np.asarray(Image.open(m)) for m in s.step_masks[:3]]
        for a in range(3):
            for b in range(a + 1, 3):
                same = torch.allclose(batch.targets[row, a], batch.targets[row, b])
                assert same == np.array_equal(masks[a], masks[b]), (row, a, b, s.step_masks)
    f = _recipe(tmp_path, phantom_dir, roi_store, **{"loss.visual_target": "per_hop", "data.max_samples": 96})
    Trainer(Recipe.from_yaml(f)).run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("vis" in r and r["k"] >= 3 for r in rows)


def test_torchrun_two_processes(tmp_path, phantom_dir, roi_store):
    f = _recipe(tmp_path, phantom_dir, roi_store, **{"curriculum.epochs": [0.5, 0.5, 0.5]})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # torchrun's static rendezvous needs a concrete free port
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            "-m",
            "vital_core.cli",
            "train",
            "--recipe",
            str(f),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["samples_per_s"] > 0
    final = load_file(tmp_path / "run" / "final.safetensors")
    assert any("lora_B" in k and final[k].abs().sum() > 0 for k in final)  # LoRA actually trained


def test_warm_start_keeps_a_bundles_trained_heads(tiny_bundle):
    """Training on top of a bundle with scaffolding continues from those heads (stage-0 bundles have none)."""
    from training.trainer import build_training_model
    from vital_core.bundle import load_scaffold

    recipe = Recipe.from_dict({"model": {"init_bundle": str(tiny_bundle)}})
    model = build_training_model(recipe, torch.device("cpu"))
    saved = load_scaffold(tiny_bundle).state_dict()
    for name, tensor in model.scaffold.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], msg=name)
    assert all(p.requires_grad for p in model.scaffold.parameters())
    assert any("lora_" in n and p.requires_grad for n, p in model.backbone.named_parameters())


def test_coconut_stages_make_the_first_sentences_latent(phantom_samples):
    from training.data.batches import KRule, sample_k
    from training.recipe import CurriculumSpec

    phases = phases_for(CurriculumSpec(kind="coconut", epochs=[1, 1, 2, 3]))
    assert [p.latent_cap for p in phases] == [1, 2, 3, 4] and [p.epochs for p in phases] == [1, 1, 2, 3]
    hop = next(s for s in phantom_samples if len(s.reasoning) == 4)
    one = next(s for s in phantom_samples if len(s.reasoning) == 1)
    assert [sample_k(hop, KRule(cap=p.latent_cap)) for p in phases] == [1, 2, 3, 4]
    assert [sample_k(one, KRule(cap=p.latent_cap)) for p in phases] == [1, 1, 1, 1]
    assert sample_k(hop, KRule(cap=2, direct=frozenset({hop.id}))) == 0
    assert sample_k(hop, KRule(override=3, cap=1)) == 3
    batches = k_batches(phantom_samples, 8, 0, k_override=KRule(cap=2))
    assert all(len({sample_k(phantom_samples[i], KRule(cap=2)) for i in b}) == 1 for b in batches)


def test_chain_target_and_direct_share_train(tmp_path, phantom_dir, roi_store):
    from training.trainer import Trainer

    path = _recipe(
        tmp_path,
        phantom_dir,
        roi_store,
        **{
            "data.target": "chain",
            "data.max_answer_tokens": 96,
            "curriculum.kind": "coconut",
            "curriculum.epochs": [0.25, 0.25],
            "direct_share": 0.5,
        },
    )
    trainer = Trainer(Recipe.from_yaml(path))
    out = trainer.run()
    assert torch.isfinite(torch.tensor(out["total"])) and out["steps"] > 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ks = {r["k"] for r in rows}
    assert 0 in ks and ks <= {0, 1, 2}, ks  # direct-share batches at K = 0, Coconut stages cap K at 1 then 2
    with pytest.raises(Exception, match="data.target"):
        Recipe.from_dict({"data": {"target": "essay"}})
    with pytest.raises(Exception, match="direct_share"):
        Recipe.from_dict({"direct_share": 1.0})


def test_train_backbone_trains_every_weight_and_checkpoints_them(tmp_path, phantom_dir, roi_store):
    """`train_backbone: true` (Coconut's setting): the latent stage updates the backbone's own weights, not
    only LoRA, and the checkpoint and the exported bundle carry them."""
    from training.export import export_bundle
    from training.trainer import Trainer, build_training_model
    from vital_core.bundle import load_bundle

    path = _recipe(tmp_path, phantom_dir, roi_store, train_backbone=True, **{"curriculum.epochs": [0.25]})
    trainer = Trainer(Recipe.from_yaml(path))
    suffix = "language_model.layers.0.input_layernorm.weight"  # a weight LoRA does not wrap

    def pick(model) -> tuple[str, torch.Tensor]:
        (hit,) = [(n, p) for n, p in model.backbone.named_parameters() if n.endswith(suffix)]
        return hit

    _, before = pick(build_training_model(trainer.recipe, torch.device("cpu")))  # the same recipe, untrained
    trainer.run()
    name, after = pick(trainer.model)
    assert after.requires_grad and not torch.equal(before, after.detach()), (
        "the backbone's own weights did not move"
    )
    final = load_file(tmp_path / "run" / "final.safetensors")
    torch.testing.assert_close(final[f"backbone.{name}"], after.detach())
    loaded = load_bundle(export_bundle(trainer.model, trainer.recipe, tmp_path / "bundle"))
    (served,) = [p for n, p in loaded.core.named_parameters() if n.endswith(suffix)]
    torch.testing.assert_close(served.float(), after.detach().float())
    with pytest.raises(Exception, match="train_backbone"):
        Recipe.from_dict({"stage": "backbone", "train_backbone": True})


def test_thoughts_per_sentence_runs_c_latent_steps_per_sentence(
    tmp_path, phantom_dir, roi_store, monkeypatch
):
    """Coconut's c: a sentence made latent becomes c fed-back states, the heads supervise each group's last."""
    from training.trainer import Trainer
    from vital_core.model import VitalModel

    seen: list[int] = []
    forward = VitalModel.forward

    def spy(self, batch, k, *args, **kwargs):
        seen.append(int(k))
        return forward(self, batch, k, *args, **kwargs)

    monkeypatch.setattr(VitalModel, "forward", spy)
    extra = {"data.target": "chain", "curriculum.kind": "coconut", "curriculum.epochs": [0.25]}
    extra["loss.lambda_words"] = 1.0
    extra["loss.words_content"] = True  # the content target on real batches: prompts, step sentences
    extra["model.overrides.latent.feed"] = "soft"  # and training through the soft feed
    path = _recipe(tmp_path, phantom_dir, roi_store, thoughts_per_sentence=3, **extra)
    out = Trainer(Recipe.from_yaml(path)).run()
    assert seen and set(seen) == {3}, seen  # stage 1: one sentence latent, three states
    assert all(torch.isfinite(torch.tensor(out[key])) for key in ("sem", "vis", "words"))
    with pytest.raises(Exception, match="thoughts_per_sentence"):
        Recipe.from_dict({"thoughts_per_sentence": 0})


def test_heads_warmup_trains_only_the_heads_first(tmp_path, phantom_dir, roi_store):
    """optim.heads_warmup_steps: the backbone's learning rate is 0 for the run's first steps (LoRA stays at its
    init), while the scaffolding trains."""
    from training.trainer import Trainer, build_training_model

    path = _recipe(tmp_path, phantom_dir, roi_store, **{"optim.heads_warmup_steps": 3})
    trainer = Trainer(Recipe.from_yaml(path), stop_after_steps=3)
    init = build_training_model(trainer.recipe, torch.device("cpu"))  # the same recipe and seed, untrained
    trainer.run()
    model = trainer.model
    lora_b = [p for n, p in model.backbone.named_parameters() if "lora_B" in n]
    assert lora_b and all(
        float(p.detach().abs().sum()) == 0.0 for p in lora_b
    )  # LoRA B starts at 0 and has not moved
    before = dict(init.scaffold.named_parameters())
    moved = [
        n for n, p in model.scaffold.named_parameters() if not torch.equal(p.detach(), before[n].detach())
    ]
    assert any(n.startswith("pj_in") for n in moved) and any(n.startswith("vp") for n in moved)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows[:3]] == [0.0, 0.0, 0.0]  # the logged lr is the backbone group's
    with pytest.raises(Exception, match="heads_warmup_steps"):
        Recipe.from_dict({"optim": {"heads_warmup_steps": -1}})


def test_words_loss_is_the_cross_entropy_to_a_sentences_distinct_tokens():
    from training.trainer import words_loss

    head = torch.nn.Identity()  # the latent is the logits: V = H = 6
    ids = torch.tensor([[[2, 3, 3, 5, 0]]])  # one step: tokens 2, 3 (twice), 5, then padding (id 0)
    mask = torch.tensor([[[1, 1, 1, 1, 0]]])
    valid = torch.tensor([[True]])
    right = torch.full((1, 1, 6), -30.0)
    right[0, 0, [2, 3, 5]] = 0.0  # all mass spread evenly on the three distinct tokens
    assert abs(float(words_loss(head, right, ids, mask, valid)) - math.log(3)) < 1e-4
    wrong = torch.full((1, 1, 6), -30.0)
    wrong[0, 0, 0] = 0.0  # all mass on the padding id
    assert float(words_loss(head, wrong, ids, mask, valid)) > 25
    assert float(words_loss(head, right, ids, mask, torch.tensor([[False]]))) == 0.0
    with pytest.raises(Exception, match="lambda_words"):
        Recipe.from_dict({"loss": {"lambda_words": -1}})


def test_words_content_keeps_only_what_the_question_and_the_batch_do_not_share():
    """loss.words_content: a token in the row's prompt, or in more than half of the step's sentences in the
    batch, leaves the target; a row with nothing left keeps its whole sentence."""
    from training.trainer import words_loss

    head = torch.nn.Identity()  # V = H = 8
    # step 1 of three rows: "4 5 6" / "4 5 7" / "4 5 6"; token 4 is in every sentence, 5 in row 0's prompt
    ids = torch.tensor([[[4, 5, 6]], [[4, 5, 7]], [[4, 5, 6]]])
    mask = torch.ones_like(ids)
    valid = torch.ones(3, 1, dtype=torch.bool)
    prompts = torch.tensor([[5, 1], [1, 1], [1, 1]])

    def on(*toks):
        x = torch.full((1, 8), -30.0)
        x[0, list(toks)] = 0.0
        return x

    # row 0: 4 shared by all, 5 in its prompt, 6 in 2 of 3 sentences (> half): nothing left, whole bag kept
    # row 1: 4 shared, 5 in 3 of 3, 7 in 1 of 3 -> {7}; row 2 as row 0 but 5 not in its prompt (3 of 3) -> bag
    lat = torch.stack([on(4, 5, 6), on(7), on(4, 5, 6)])  # (3, 1, 8): each row's expected target
    got = float(words_loss(head, lat, ids, mask, valid, prompt_ids=prompts))
    assert abs(got - (math.log(3) + 0.0 + math.log(3)) / 3) < 1e-4
    # a share cut of 0.7 keeps token 6 (2 of 3 sentences): rows 0 and 2 -> {6}, row 1 -> {7}
    lat2 = torch.stack([on(6), on(7), on(6)])
    assert float(words_loss(head, lat2, ids, mask, valid, prompt_ids=prompts, max_share=0.7)) < 1e-4
    assert float(words_loss(head, lat2, ids, mask, valid)) > 1.0  # the plain target is the whole sentence
    assert Recipe.from_dict({"loss": {"words_content": True}}).loss.words_content


def test_distill_loss_aligns_the_written_rest_with_the_teachers_tail():
    """Student tokens are the teacher's last tokens; only positions predicting the same token count."""
    from training.trainer import distill_loss

    h = 4
    ref_ids = torch.tensor([[7, 8, 9, 10, 11, 1]])  # teacher: sentence 1 (7, 8), the rest (9, 10, 11), stop 1
    ref_mask = torch.ones_like(ref_ids)
    ref = torch.randn(1, 6, h)
    ids = torch.tensor([[5, 10, 11, 1, 0, 0]])  # student: the rest, its first token tokenized apart (5 ≠ 9)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    hidden = torch.zeros(1, 6, h)
    hidden[0, 1:4] = ref[0, 3:6]  # equal to the teacher at the three shared tokens
    hidden[0, 0] = 100.0  # the first token differs in id: never compared
    hidden[0, 4:] = 100.0  # padding: never compared
    assert float(distill_loss(hidden, ids, mask, ref, ref_ids, ref_mask)) < 1e-10
    off = hidden.clone()
    off[0, 2] = 0.0  # one shared token's state at 0: relative error 1 there, 1/3 on average
    assert abs(float(distill_loss(off, ids, mask, ref, ref_ids, ref_mask)) - 1 / 3) < 1e-5
    none = torch.tensor([[2, 2, 2, 2, 0, 0]])  # no shared token: zero, still a graph
    zero = distill_loss(hidden.requires_grad_(), none, mask, ref, ref_ids, ref_mask)
    assert zero.requires_grad and float(zero.detach()) == 0.0
    with pytest.raises(Exception, match="lambda_distill"):
        Recipe.from_dict({"loss": {"lambda_distill": -1}})


def test_distill_gradient_reaches_the_fed_states(tmp_path, phantom_dir, roi_store, monkeypatch):
    """loss.lambda_distill: a latent run logs the distillation term, and its gradient alone reaches the state
    fed to the loop (the written rest's states depend on what was fed back)."""
    from training.trainer import Trainer, TrainStep
    from vital_core.model import VitalModel

    fed: list[torch.Tensor] = []
    grads: list[float] = []
    vm_forward, step_forward = VitalModel.forward, TrainStep.forward

    def keep(self, batch, k, *args, **kwargs):
        if int(k) > 0 and torch.is_grad_enabled():  # the student: remember what each latent step is fed
            fed.clear()
            kwargs["feed_override"] = lambda i, h: fed.append(h) or h
        return vm_forward(self, batch, k, *args, **kwargs)

    def spy(self, *args, **kwargs):
        losses = step_forward(self, *args, **kwargs)
        if "distill" in losses:
            (g,) = torch.autograd.grad(losses["distill"], fed[0], retain_graph=True)
            grads.append(float(g.norm()))
        return losses

    monkeypatch.setattr(VitalModel, "forward", keep)
    monkeypatch.setattr(TrainStep, "forward", spy)
    extra = {"data.target": "chain", "curriculum.kind": "coconut", "curriculum.epochs": [0.25]}
    extra["loss.lambda_distill"] = 1.0
    out = Trainer(Recipe.from_yaml(_recipe(tmp_path, phantom_dir, roi_store, **extra))).run()
    assert math.isfinite(out["distill"]) and out["distill"] > 0 and "teacher" not in out
    assert grads and all(g > 0 for g in grads), grads
    # loss.distill_teacher: the teacher pass's own chain loss joins the total (CODI's joint training)
    extra["loss.distill_teacher"] = True
    path = _recipe(tmp_path / "joint", phantom_dir, roi_store, **extra)
    joint = Trainer(Recipe.from_yaml(path), stop_after_steps=1).run()
    assert math.isfinite(joint["teacher"]) and joint["teacher"] > 0
    assert joint["total"] > joint["task"] + joint["teacher"]  # + sem, vis, distill


def test_layer_states_are_the_states_that_predict_each_answer_token(tiny_model, images):
    """LayerStates' last layer, normed, is LatentOutput.hidden (state j predicts token j, at K = 0 and K = 2);
    a call it does not wrap records nothing, and reading the same sample twice distils to zero."""
    from training.trainer import LayerStates, distill_loss
    from vital_core.preprocess import encode_answers

    batch = tiny_model.encode(images[:2], ["Which organ?", "Is it dark?"])
    ids, mask = encode_answers(["The liver is left. So: the abscess", "no"], tiny_model.tokenizer, 32)
    norm = tiny_model.core.model.language_model.norm
    with torch.no_grad():
        for k in (0, 2):
            with LayerStates(tiny_model.core) as rec:
                out = tiny_model(batch, k, answer_ids=ids, answer_mask=mask)
            states = rec.answer_states()
            assert len(states) == len(tiny_model.core.model.language_model.layers)
            assert all(s.shape == out.hidden.shape for s in states)
            torch.testing.assert_close(norm(states[-1]), out.hidden)
        with LayerStates(tiny_model.core) as again:
            tiny_model(batch, 2, answer_ids=ids, answer_mask=mask)
        tiny_model(batch, 1, answer_ids=ids, answer_mask=mask)  # outside: not recorded
        assert all(len(c) == len(rec.calls[0]) for c in again.calls)
        for h, t in zip(again.answer_states(), rec.answer_states()):
            assert float(distill_loss(h, ids, mask, t, ids, mask)) < 1e-10
    assert not LayerStates(tiny_model.core, enabled=False).calls
