"""Pieces of the PPO recipe that decide numbers: reward transforms over the rollout batch, the cost sign for rate
constraints, the ptx schedule, the rollout-batch record, and the optimizer step that refuses non-finite gradients."""

from __future__ import annotations

import math

import pytest
import torch

from safe_rlhf.config import GenerationConfig, LagrangeConfig, PPOConfig, PPOSettings, PromptDataConfig, RLTrainConfig
from safe_rlhf.recipes.common import BatchSchedule
from safe_rlhf.recipes.ppo import PPORecipe, ptx_max_length
from safe_rlhf.recipes.rollout import Generated, Rollout, batch_mean_std, concat_padded

pytestmark = pytest.mark.unit


def recipe_with(config: PPOConfig, rank: int = 0) -> PPORecipe:
    """A recipe object with its config only: enough for the pure parts (no engines, one process)."""
    recipe = PPORecipe.__new__(PPORecipe)
    recipe.config, recipe.variant, recipe.step = config, config.recipe, 0
    return recipe


# ------------------------------------------------------------------------------------------- 3. reward transforms


def test_reward_scaling_uses_the_whole_rollout_batch_not_a_micro_batch():
    # micro_batch_size=1 used to give each reward its own mean and a NaN std. Now, over the batch [1, 3, 5, 7]:
    # mean 4, population std sqrt(5) = 2.2361; (r - 4) / 2.2361 = [-1.342, -0.447, 0.447, 1.342], clipped to +-1.
    config = PPOConfig(
        recipe="ppo",
        ppo=PPOSettings(reward_scaling_clip=1.0),
        generation=GenerationConfig(no_eos_penalty=None),
        train=RLTrainConfig(rollout_batch_size=4, mini_batch_size=4, micro_batch_size=1),
    )
    rewards = torch.tensor([1.0, 3.0, 5.0, 7.0])
    out = recipe_with(config).transformed_rewards(
        rewards, torch.zeros(4, 0), torch.ones(4, dtype=torch.bool), torch.tensor([4, 4, 4, 4])
    )
    torch.testing.assert_close(out, torch.tensor([-1.0, -1 / math.sqrt(5), 1 / math.sqrt(5), 1.0]))


def test_reward_transforms_in_order_no_eos_then_shaping_then_length_penalty():
    # Episode 2 never ended: its reward becomes -10 first. Shaping with lambda 0.5 on costs [2, 0, 4]:
    # [1 - 1, 3 - 0, -10 - 2] = [0, 3, -12]; mean -3, population std sqrt((9 + 36 + 81) / 3) = sqrt(42) = 6.4807.
    # Length penalty 0.1 on lengths [10, 5, 0]: r + 2 * 6.4807 * (1 - 0.1 * len) = [0 + 0, 3 + 6.4807, -12 + 12.9615].
    config = PPOConfig(
        recipe="ppo_reward_shaping",
        ppo=PPOSettings(length_penalty_coeff=0.1),
        generation=GenerationConfig(no_eos_penalty=-10.0),
        lagrange=LagrangeConfig(init=0.5),
    )
    out = recipe_with(config).transformed_rewards(
        torch.tensor([1.0, 3.0, 99.0]),
        torch.tensor([[2.0], [0.0], [4.0]]),
        torch.tensor([True, True, False]),
        torch.tensor([10, 5, 0]),
    )
    sigma = math.sqrt(42)
    torch.testing.assert_close(out, torch.tensor([0.0, 3.0 + sigma, -12.0 + 2 * sigma]))


def test_batch_mean_std_of_one_value_is_not_nan():
    assert batch_mean_std(torch.tensor([3.0])) == (3.0, 1.0)
    mean, std = batch_mean_std(torch.tensor([[1.0, 50.0], [3.0, 50.0]]), torch.tensor([[1, 0], [1, 0]]))
    assert (mean, std) == pytest.approx((2.0, 1.0))


# -------------------------------------------------------------------------------------- 2. costs for constraints


def test_rate_constraint_reads_the_raw_cost_sign_when_scores_are_normalized():
    # Normalized cost scores [0.5, 1.5] are both "above average"; the raw scores [-1, 2] say one safe, one unsafe.
    config = PPOConfig(lagrange=LagrangeConfig(thresholds=[0.1, -1.0], constraint_types=["rate", "mean"],
                                               cost_indices=[0, 0]))  # fmt: skip
    costs = recipe_with(config).episode_costs(torch.tensor([[0.5], [1.5]]), torch.tensor([[-1.0], [2.0]]))
    # rate: (raw > 0) = [0, 1]; mean: the normalized score, as used for the reward side
    torch.testing.assert_close(costs, torch.tensor([[0.0, 0.5], [1.0, 1.5]]))


def test_rate_stream_score_feeds_the_cost_score_to_the_critic_and_keeps_the_indicator_for_the_multiplier():
    lagrange = dict(thresholds=[0.1, -1.0], constraint_types=["rate", "mean"], cost_indices=[0, 1])
    scores, raw = torch.tensor([[0.5, 3.0], [1.5, -4.0]]), torch.tensor([[-1.0, 3.0], [2.0, -4.0]])
    # sigmoid(-1) = 0.268941, sigmoid(2) = 0.880797
    for rate_stream, expected_stream in (("indicator", [[0.0, 3.0], [1.0, -4.0]]),
                                         ("probability", [[0.268941, 3.0], [0.880797, -4.0]]),
                                         ("score", [[0.5, 3.0], [1.5, -4.0]])):  # fmt: skip
        recipe = recipe_with(PPOConfig(lagrange=LagrangeConfig(**lagrange, rate_stream=rate_stream)))
        episode_costs = recipe.episode_costs(scores, raw)
        # The window (multiplier, logs) sees the indicator in both modes; the stream replaces only the rate column.
        torch.testing.assert_close(episode_costs, torch.tensor([[0.0, 3.0], [1.0, -4.0]]))
        torch.testing.assert_close(recipe.stream_costs(scores, raw, episode_costs), torch.tensor(expected_stream))


# ----------------------------------------------------------------------------------------------------------- ptx


def test_ptx_samples_differ_between_ranks_and_cover_the_data():
    config = PPOConfig(train=RLTrainConfig(rollout_batch_size=8, mini_batch_size=4, micro_batch_size=2))
    seen: dict[int, list[int]] = {}
    for rank in (0, 1):
        recipe = recipe_with(config, rank)
        recipe.rollouts_per_rank = 4  # 2 micro-batches x 2 PPO epochs = 4 actor updates per iteration
        recipe.ptx_schedule = BatchSchedule(
            num_samples=8, batch_size=4, micro_batch_size=2, world_size=2, rank=rank, seed=59
        )
        seen[rank] = [i for update in range(2) for i in recipe.ptx_indices(update)]
    # one pass over 8 samples takes 2 updates: the ranks' shares are disjoint and together all of them
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(8))


def test_ptx_max_length_defaults_to_a_rollout_length_and_is_configurable():
    assert ptx_max_length(PPOConfig(data=PromptDataConfig(max_prompt_length=48),
                                    generation=GenerationConfig(max_new_tokens=16))) == 64  # fmt: skip
    assert ptx_max_length(PPOConfig(data=PromptDataConfig(ptx_max_length=200))) == 200


# --------------------------------------------------------------------------------------------- rollout-batch record


def piece(prompt: list[list[int]], response: list[list[int]]) -> Generated:
    ids = torch.tensor([p + r for p, r in zip(prompt, response)])
    attention = (ids != 0).long()
    prompt_length = len(prompt[0])
    action = torch.cat([torch.zeros(ids.shape[0], prompt_length, dtype=torch.bool), (ids[:, prompt_length:] != 0)],
                       dim=1)[:, 1:]  # fmt: skip
    return Generated(ids, attention, action, torch.tensor([True] * ids.shape[0]), action.sum(1), prompt_length)


def test_concat_padded_keeps_padding_prompt_response_padding_and_select_trims_it_back():
    # Micro-batch a: prompt length 2, response length 1; micro-batch b: prompt 3, response 3 (0 is padding).
    a = piece([[5, 6]], [[7]])
    b = piece([[0, 8, 9]], [[10, 11, 0]])
    batch = concat_padded([a, b], pad_token_id=0)
    assert batch.input_ids.tolist() == [[0, 5, 6, 7, 0, 0], [0, 8, 9, 10, 11, 0]]
    assert batch.prompt_length == 3
    assert batch.action_mask.tolist() == [[False, False, True, False, False], [False, False, True, True, False]]
    n, width = batch.input_ids.shape
    rollout = Rollout(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, action_mask=batch.action_mask,
        old_log_probs=torch.arange(n * (width - 1)).float().reshape(n, width - 1),
        ref_log_probs=torch.zeros(n, width - 1), rewards=torch.tensor([1.0, 2.0]), costs=torch.zeros(n, 1),
        constraint_members=torch.ones(n, 1, dtype=torch.bool),
        raw_costs=torch.zeros(n, 1), reward_scores=torch.zeros(n, 1), reward_values=torch.zeros(n, width - 1),
        cost_values=torch.zeros(n, 1, width - 1), reward_advantages=torch.zeros(n, width - 1),
        reward_returns=torch.zeros(n, width - 1), cost_advantages=torch.zeros(n, 1, width - 1),
        cost_returns=torch.zeros(n, 1, width - 1), ended_with_eos=batch.ended_with_eos,
        response_lengths=batch.response_lengths,
    )  # fmt: skip
    first, second = rollout.micro_batches(1)
    # a's real tokens are columns 1-3: its tokens [5, 6, 7] and the actions at positions 1-2 (old log-probs 1, 2)
    assert rollout.columns(slice(0, 1)) == (1, 4)
    assert first.input_ids.tolist() == [[5, 6, 7]] and first.old_log_probs.tolist() == [[1.0, 2.0]]
    assert first.action_mask.tolist() == [[False, True]] and first.cost_values.shape == (1, 1, 2)
    assert second.input_ids.tolist() == [[8, 9, 10, 11]] and second.action_mask.tolist() == [[False, True, True]]
    assert first.rewards.tolist() == [1.0] and second.rewards.tolist() == [2.0]


# ------------------------------------------------------------------------------------------ non-finite gradients


class Zero0Engine:
    """What a ZeRO-0 DeepSpeed engine offers the step function: the module with plain .grad tensors, the optimizer,
    the accumulation boundary. (A real engine would need a process group in the test process, which would leak its
    MASTER_PORT into every later subprocess test.)"""

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        self.module, self.optimizer = model, torch.optim.SGD(model.parameters(), lr=lr)

    def zero_optimization_stage(self) -> int:
        return 0

    def is_gradient_accumulation_boundary(self) -> bool:
        return True

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad()


def test_a_nonfinite_gradient_with_a_finite_loss_skips_the_zero0_step():
    from safe_rlhf.recipes.common import step_unless_nonfinite_gradients

    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    engine = Zero0Engine(model, lr=0.5)
    # A finite loss whose gradient is NaN: row 2 of the input holds inf and is masked out after the arithmetic,
    # as a padding position would be. Forward: where([y1, y2], [True, False]) sums to y1 = w1 = 1. Backward:
    # dL/dy = [1, 0], dL/dw = x^T dL/dy = [1 * 1 + 0 * 0, 0 * 1 + inf * 0] = [1, NaN].
    output = model(torch.tensor([[1.0, 0.0], [0.0, float("inf")]]))  # (2, 1)
    loss = torch.where(torch.tensor([[True], [False]]), output, torch.zeros_like(output)).sum()
    assert torch.isfinite(loss)
    loss.backward()
    assert not torch.isfinite(model.weight.grad).all()
    assert step_unless_nonfinite_gradients(engine) is False
    assert model.weight.tolist() == [[1.0, 2.0]]  # untouched, where a plain step would write NaN
    # a finite step goes through: loss w1 -> gradient [1, 0], SGD lr 0.5 -> [0.5, 2]
    (model.weight[0, 0] * 1.0).backward()
    assert step_unless_nonfinite_gradients(engine) is True
    assert model.weight.tolist() == [[0.5, 2.0]]
    # under ZeRO 1-3 DeepSpeed's own overflow check owns this decision: the step is always handed to it
    engine.zero_optimization_stage = lambda: 2  # type: ignore[method-assign]
    (model.weight[0, 1] * float("nan")).backward()
    assert step_unless_nonfinite_gradients(engine) is True


# ------------------------------------------------------------------------------- 5. grouped constraints (by prompt)


def test_prompt_group_members_by_hand():
    from safe_rlhf.recipes.ppo import prompt_group_members

    metas = [{"system_kind": "authority", "risky": True}, {"system_kind": "none", "risky": False}, {}]
    members = prompt_group_members(metas, [None, "system_kind=authority", "risky=true"], 3)
    assert members.tolist() == [[True, True, True], [True, False, False], [True, False, False]]
    assert prompt_group_members(metas, [], 2).tolist() == [[True, True]] * 3  # no groups: every prompt


def test_prompt_groups_config_is_checked():
    from safe_rlhf.config import ConfigError

    with pytest.raises(ConfigError, match=r"lagrange\.prompt_groups needs one entry per constraint"):
        LagrangeConfig(thresholds=[0.1, 0.1], constraint_types=["rate"] * 2, cost_indices=[0, 0],
                       prompt_groups=["risky=true"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"lagrange.prompt_groups entry 'risky' must be KEY=VALUE or null"):
        LagrangeConfig(thresholds=[0.1], constraint_types=["rate"], cost_indices=[0], prompt_groups=["risky"])


def test_a_grouped_constraint_updates_its_multiplier_from_its_own_prompts_only():
    from types import SimpleNamespace

    from safe_rlhf.algorithms.lagrange import LagrangeMultiplier
    from safe_rlhf.recipes.ppo import prompt_group_members

    config = PPOConfig(recipe="ppo_lag", lagrange=LagrangeConfig(
        thresholds=[0.5, 0.5], constraint_types=["rate", "rate"], cost_indices=[0, 0], mode="log", init=1.0, lr=0.1,
        prompt_groups=[None, "system_kind=authority"]))  # fmt: skip
    recipe = recipe_with(config)
    recipe.num_constraints = 2
    recipe.multipliers = [LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.5, window_size=128) for _ in range(2)]
    metas = [{"system_kind": "authority"}, {"system_kind": "none"}, {"system_kind": "authority"}, {}]
    members = prompt_group_members(metas, config.lagrange.prompt_groups, 2)
    unsafe = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    rollout = SimpleNamespace(costs=unsafe * members, constraint_members=members)
    lambdas = recipe.update_multipliers(rollout)
    # all prompts: J = 3/4, log lambda = 0 + 0.1 * 1 * (0.75 - 0.5); the authority group: J = 1/2 (its 2 episodes,
    # not 1/4 over all 4), no violation, lambda stays 1.
    assert lambdas[0] == pytest.approx(math.exp(0.025)) and lambdas[1] == pytest.approx(1.0)
    assert recipe.multipliers[1].window_mean() == 0.5
    # An iteration with no episode of the group leaves that multiplier (and its window) alone.
    none = torch.zeros(2, 2, dtype=torch.bool)
    none[:, 0] = True
    lambdas = recipe.update_multipliers(SimpleNamespace(costs=torch.ones(2, 2) * none, constraint_members=none))
    assert lambdas[1] == pytest.approx(1.0) and len(recipe.multipliers[1].window) == 2


def test_prompt_groups_without_a_cost_model_give_no_columns():
    from safe_rlhf.recipes.ppo import prompt_group_members

    assert prompt_group_members([{"risky": True}], ["risky=true"], 0).shape == (1, 0)


def test_a_grouped_constraint_without_validation_prompts_is_refused_at_start_up(safe_rlhf_cache):
    from transformers import AutoTokenizer

    from safe_rlhf.assets import resolve_model_path
    from safe_rlhf.config import ConfigError

    config = PPOConfig(
        data=PromptDataConfig(train="toyworld:system_prompts", eval=None, max_prompt_length=80,
                              validation_fraction=0.01),
        lagrange=LagrangeConfig(thresholds=[0.05], constraint_types=["rate"], cost_indices=[0],
                                prompt_groups=["system_kind=nonexistent"]),
        train=RLTrainConfig(select_steps=5),
    )  # fmt: skip
    recipe = recipe_with(config)
    recipe.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny"))
    with pytest.raises(ConfigError, match=r"lagrange\.prompt_groups\[0\]=system_kind=nonexistent matches none of"):
        recipe._setup_data()


# ------------------------------------------------------------------------------------- the cost critic's value head


def test_cost_critic_head_choice():
    from safe_rlhf.config import ConfigError
    from safe_rlhf.recipes.ppo import cost_critic_fresh_head

    rate = dict(thresholds=[0.05], constraint_types=["rate"], cost_indices=[0])
    mean = dict(thresholds=[0.0], constraint_types=["mean"], cost_indices=[0])
    # The cost model's head predicts its score: kept for a mean constraint under "auto", replaced for a rate one
    # (a 0/1 episode cost), always kept under "cost_model" and always replaced under "fresh".
    assert not cost_critic_fresh_head(LagrangeConfig(**mean, critic_head="auto"), 1)
    assert cost_critic_fresh_head(LagrangeConfig(**rate, critic_head="auto"), 1)
    assert not cost_critic_fresh_head(LagrangeConfig(**rate, critic_head="cost_model"), 1)
    assert cost_critic_fresh_head(LagrangeConfig(**mean, critic_head="fresh"), 1)
    # A rate constraint whose stream is the cost score (lagrange.rate_stream=score): auto keeps the model's head.
    assert not cost_critic_fresh_head(LagrangeConfig(**rate, critic_head="auto", rate_stream="score"), 1)
    # Two constraints from a one-output cost model: a fresh two-output head whatever the setting.
    two = dict(thresholds=[0.0, 0.0], constraint_types=["mean", "mean"], cost_indices=[0, 0])
    assert cost_critic_fresh_head(LagrangeConfig(**two, critic_head="cost_model"), 1)
    assert not cost_critic_fresh_head(LagrangeConfig(**two, critic_head="cost_model"), 2)
    with pytest.raises(ConfigError, match=r"lagrange\.critic_head=.new. is not valid"):
        LagrangeConfig(**rate, critic_head="new")
    with pytest.raises(ConfigError, match=r"lagrange\.rate_stream=.raw. is not valid"):
        LagrangeConfig(**rate, rate_stream="raw")
