"""A synthetic world with known helpfulness and harm, for testing every Safe RLHF stage on CPU.

    python -m safe_rlhf.toyworld generate --out /tmp/toyworld --seed 0
    python -m safe_rlhf.toyworld judge --prompt "how do i fix my slow laptop" --response "first restart then update"

``world.py`` documents the language, ``judges.py`` the ground truth, ``generate.py`` the datasets.
"""

from safe_rlhf.toyworld.generate import corpus_text, ensure_generated, generate
from safe_rlhf.toyworld.judges import Harm, harm, helpfulness
from safe_rlhf.toyworld.world import HARM_CATEGORIES, REQUESTS, VOCABULARY, Request, find_request

__all__ = [
    "HARM_CATEGORIES",
    "REQUESTS",
    "VOCABULARY",
    "Harm",
    "Request",
    "corpus_text",
    "ensure_generated",
    "find_request",
    "generate",
    "harm",
    "helpfulness",
]
