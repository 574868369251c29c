"""What the model writes after its latent steps, and how the answer is read back: one rule for all.

Three ways to answer, one text format (training targets, evaluation and serving share this file):

* **direct** (K = 0): the answer alone, "The spleen."
* **explicit chain of thought** (K = 0): every reasoning sentence, then the marker, then the answer:
  "The brightest lesion is the abscess. ... So the brightest lesion lies in the spleen. Answer: The spleen."
* **latent** (K > 0): the first K sentences are replaced by K silent steps; the sentences left are written,
  then the marker and the answer; with all sentences latent, the answer alone (Coconut-style curriculum).

`final_answer` reads the answer back: the text after the last marker, or the whole text without one.
"""

from __future__ import annotations

from collections.abc import Sequence

ANSWER_MARK = "Answer:"
"""Separates a written chain from the answer."""
TARGETS = ("answer", "chain")
"""What a recipe trains the model to write after its K latent steps: the answer alone, or the sentences
not yet made latent, then the answer (`data.target`)."""


def target_text(reasoning: Sequence[str], answer: str, k: int, target: str = "answer") -> str:
    """The text a sample is trained to write after k latent steps.

    Args:
        reasoning: the sample's reasoning sentences.
        answer: its answer.
        k: latent steps it runs (sentences 1..k are latent).
        target: "answer" (write only the answer) or "chain" (write sentences k+1.. then the answer).
    """
    if target not in TARGETS:
        raise ValueError(f"target: one of {', '.join(TARGETS)}")
    rest = [s.strip() for s in reasoning[k:] if s.strip()] if target == "chain" else []
    if not rest:
        return answer.strip()
    return f"{' '.join(rest)} {ANSWER_MARK} {answer.strip()}"


def final_answer(text: str) -> str:
    """The answer in a decoded text: after the last answer marker, or all of it when there is none."""
    head, mark, tail = text.rpartition(ANSWER_MARK)
    return tail.strip() if mark else text.strip()


def written_steps(text: str) -> str:
    """The written chain in a decoded text (what precedes the answer marker; empty without one)."""
    head, mark, _ = text.rpartition(ANSWER_MARK)
    return head.strip() if mark else ""
