"""Pure torch math of Safe RLHF: masked statistics, PPO-Lagrangian losses, score-model losses, Lagrange multipliers,
the preference losses without RL (DPO, IPO, SafeDPO) and the moderation classifier's loss.

Imports only torch and the standard library (no DeepSpeed, no transformers), so every piece is unit-testable on CPU.
Shapes: B batch, L token positions, K constraints / attributes; masks are response-token masks (B, L), bool or 0/1.
"""

from safe_rlhf.algorithms.dpo import (
    DPOLossOutput,
    SafePairs,
    dpo_loss,
    safe_dpo_loss,
    safe_dpo_pairs,
    sequence_log_probs,
)
from safe_rlhf.algorithms.lagrange import LagrangeMultiplier
from safe_rlhf.algorithms.masked import masked_mean, masked_var, masked_whiten
from safe_rlhf.algorithms.moderation import (
    ModerationLossStats,
    balanced_pos_weight,
    moderation_loss,
    severity_levels,
    severity_targets,
)
from safe_rlhf.algorithms.ppo import (
    PPOClipStats,
    ValueLossStats,
    clipped_value_loss,
    combined_advantages,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_entropy,
    ppo_clip_loss,
)
from safe_rlhf.algorithms.score_losses import (
    CostModelStats,
    MultiAttributeStats,
    RewardModelStats,
    combine_attributes,
    cost_model_loss,
    length_only_reward,
    length_penalized_scores,
    multi_attribute_regression_loss,
    reward_model_loss,
    scaled_scores,
)

__all__ = [
    "CostModelStats",
    "DPOLossOutput",
    "LagrangeMultiplier",
    "ModerationLossStats",
    "MultiAttributeStats",
    "PPOClipStats",
    "RewardModelStats",
    "SafePairs",
    "ValueLossStats",
    "balanced_pos_weight",
    "clipped_value_loss",
    "combine_attributes",
    "combined_advantages",
    "cost_model_loss",
    "dpo_loss",
    "explained_variance",
    "gae",
    "kl_penalized_rewards",
    "length_only_reward",
    "length_penalized_scores",
    "masked_entropy",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "moderation_loss",
    "multi_attribute_regression_loss",
    "ppo_clip_loss",
    "reward_model_loss",
    "safe_dpo_loss",
    "safe_dpo_pairs",
    "scaled_scores",
    "sequence_log_probs",
    "severity_levels",
    "severity_targets",
]
