"""Teacher distillation (paper §A.2-A.3): overlay, prompts, OpenAI-compatible client, quality gates, runner."""

from training.distill.client import TeacherClient, TeacherSettings
from training.distill.gates import FORBIDDEN_TERMS, GATES, PATHOLOGY_TERMS, run_gates
from training.distill.overlay import render_overlay
from training.distill.prompts import SYSTEM_PROMPT, user_prompt
from training.distill.runner import DistillConfig, distill, distill_async

__all__ = [
    "FORBIDDEN_TERMS",
    "GATES",
    "PATHOLOGY_TERMS",
    "SYSTEM_PROMPT",
    "DistillConfig",
    "TeacherClient",
    "TeacherSettings",
    "distill",
    "distill_async",
    "render_overlay",
    "run_gates",
    "user_prompt",
]
