"""The written-chain format: what each mode writes after its latent steps, and how the answer is read back."""

from __future__ import annotations

import pytest

from vital_core.chain import ANSWER_MARK, final_answer, target_text, written_steps

STEPS = [
    "The largest lesion is the cyst.",
    "The cyst lies in the upper part.",
    "It is in the liver.",
    "So the liver.",
]


def test_targets_of_each_mode() -> None:
    assert target_text(STEPS, "The liver.", 0) == "The liver."  # direct
    cot = target_text(STEPS, "The liver.", 0, "chain")
    assert cot == " ".join(STEPS) + f" {ANSWER_MARK} The liver."
    assert target_text(STEPS, "The liver.", 2, "chain") == " ".join(STEPS[2:]) + f" {ANSWER_MARK} The liver."
    assert target_text(STEPS, "The liver.", 4, "chain") == "The liver."  # every sentence latent
    assert target_text(STEPS, "The liver.", 9, "chain") == "The liver."
    with pytest.raises(ValueError):
        target_text(STEPS, "x", 0, "essay")


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_final_answer_reads_back_every_target(k: int) -> None:
    text = target_text(STEPS, "Hyperdense with sharp margins.", k, "chain")
    assert final_answer(text) == "Hyperdense with sharp margins."
    assert written_steps(text) == " ".join(STEPS[k:])


def test_final_answer_of_plain_and_repeated_markers() -> None:
    assert final_answer("  Yes. ") == "Yes." and written_steps("Yes.") == ""
    assert final_answer(f"a {ANSWER_MARK} b {ANSWER_MARK} The spleen.") == "The spleen."
