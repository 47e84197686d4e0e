"""PPOTrainer off the happy path: seeded critic init, exact resume mid-rollout, non-finite rewards, wrong tokenizers."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaForSequenceClassification

from trl_extras.testing import build_tiny_tokenizer
from trl_extras.testing._lm import _CORPUS, _llama_config
from trl_extras.trainer.ppo_config import PPOConfig
from trl_extras.trainer.ppo_trainer import PPOTrainer

PROMPTS = ["The movie was", "I think that", "What is the", "Hello there"]


def even_tokens(completion_ids, **kwargs):
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def inf_at_row_2(completion_ids, **kwargs):
    return [float("inf") if i == 2 else 0.5 for i in range(len(completion_ids))]


def prompt_dataset(repeats=4):
    return Dataset.from_list([{"prompt": p} for p in PROMPTS * repeats])


def config(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_ppo_epochs=2, num_mini_batches=2,
        max_completion_length=4, learning_rate=1e-2, max_steps=2, logging_steps=1, report_to="none", bf16=False,
        save_strategy="no", seed=0,
    )  # fmt: skip
    kwargs.update(overrides)
    return PPOConfig(**kwargs)


def make(tmp_path, tiny_lm_path, reward_funcs=even_tokens, **overrides):
    return PPOTrainer(
        model=tiny_lm_path, reward_funcs=reward_funcs, args=config(tmp_path, **overrides),
        train_dataset=prompt_dataset(), processing_class=AutoTokenizer.from_pretrained(tiny_lm_path),
    )  # fmt: skip


def params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---- same seed, same run ------------------------------------------------------------------------------------------


def test_new_value_head_is_seeded_whatever_the_global_rng(tmp_path, tiny_lm_path):
    heads = []
    for global_seed, seed in ((123, 0), (456, 0), (123, 1)):
        torch.manual_seed(global_seed)  # two processes, or two runs, start from different global RNG states
        trainer = make(tmp_path, tiny_lm_path, seed=seed, value_head_init="normal")  # the random init
        heads.append(trainer.value_model.score.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])  # args.seed decides, not the global RNG
    assert not torch.equal(heads[0], heads[2])  # and it does decide


def test_two_seed_0_runs_are_identical(tmp_path, tiny_lm_path):
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        trainer = make(tmp_path / str(global_seed), tiny_lm_path, max_steps=4)
        trainer.train()
        runs.append((params(trainer.model), params(trainer.value_model)))
    assert_same(runs[0][0], runs[1][0])
    assert_same(runs[0][1], runs[1][1])


# ---- non-finite rewards -------------------------------------------------------------------------------------------


def test_inf_reward_from_a_function_stops_before_the_update_naming_it_and_the_row(tmp_path, tiny_lm_path):
    trainer = make(tmp_path, tiny_lm_path, reward_funcs=[even_tokens, inf_at_row_2])
    before = params(trainer.model)
    # trl_extras.rewards.check_reward_funcs (wrapped around every reward function) names it first
    with pytest.raises(
        ValueError, match=r"reward function 'inf_at_row_2' returned inf.* for row 2 of the batch \(prompt "
    ):
        trainer.train()
    assert_same(params(trainer.model), before)  # no NaN, no update


def test_inf_or_nan_score_from_a_reward_model_names_the_model(tmp_path, tiny_lm_path, tiny_reward_model_path):
    for bad in (float("-inf"), float("nan")):
        trainer = make(tmp_path, tiny_lm_path, reward_funcs=[tiny_reward_model_path])
        reward_model = trainer.reward_funcs[0]

        def poison(module, inputs, output, bad=bad):
            output = output.clone()
            output[1] = bad
            return output

        reward_model.score.register_forward_hook(poison)
        before = params(trainer.model)
        with pytest.raises(ValueError, match=rf"reward model `{reward_model.config._name_or_path.split('/')[-1]}` "
                           rf"returned {bad} for row 1"):  # fmt: skip
            trainer.train()
        assert_same(params(trainer.model), before)


def test_check_finite_rewards_names_the_process_and_row_of_a_gathered_batch():
    from torch import nn

    from trl_extras.rewards import RewardFunctionError, check_finite_rewards

    rewards = torch.zeros(8, 2)  # 2 processes x 4 rows, gathered; column 0 a function, column 1 a reward model
    rewards[2, 0] = float("nan")  # a function's None: that row is left out, not an error
    check_finite_rewards(rewards, [even_tokens, nn.Linear(1, 1)], ["even", "rm"], ["p"] * 4, ["c"] * 4, 2, 0)
    rewards[5, 1] = float("nan")  # a reward model has no None: an error, on every process
    args = (rewards, [even_tokens, nn.Linear(1, 1)], ["even", "rm"], [f"p{i}" for i in range(4)], ["c"] * 4, 2)
    with pytest.raises(
        RewardFunctionError, match=r"reward model `rm` returned nan for row 1 of process 1's batch \(1 of"
    ):
        check_finite_rewards(*args, 0)
    with pytest.raises(RewardFunctionError, match=r"row 1 of process 1's batch \(prompt 'p1', completion 'c'\)"):
        check_finite_rewards(*args, 1)  # the process holding the row shows it


# ---- the critic's vocabulary --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_model_with_other_tokenizer(tmp_path_factory, tiny_lm_path):
    """A reward model whose tokenizer has the policy's vocabulary size but other tokens (trained on other text)."""
    directory = tmp_path_factory.mktemp("other-rm")
    policy_tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    tokenizer = build_tiny_tokenizer(directory, corpus=[text[::-1] for text in _CORPUS])  # other merges
    assert len(tokenizer) == len(policy_tokenizer) and tokenizer.get_vocab() != policy_tokenizer.get_vocab()
    torch.manual_seed(0)
    LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1)).save_pretrained(directory)
    return str(directory)


def test_value_model_from_a_reward_model_with_another_vocabulary_is_an_error(
    tmp_path, tiny_lm_path, reward_model_with_other_tokenizer
):
    with pytest.raises(
        ValueError, match=r"reward model `other-rm0`, whose tokenizer differs.*value_model_init='policy'"
    ):
        make(tmp_path, tiny_lm_path, reward_funcs=reward_model_with_other_tokenizer)
    with pytest.raises(ValueError, match=r"`value_model` \(.*\), whose tokenizer differs"):
        PPOTrainer(
            model=tiny_lm_path, reward_funcs=even_tokens, args=config(tmp_path), train_dataset=prompt_dataset(),
            value_model=reward_model_with_other_tokenizer,
        )  # fmt: skip
    # the reward model itself may use its own tokenizer (it reads text); only the critic must share the policy's
    trainer = make(tmp_path, tiny_lm_path, reward_funcs=reward_model_with_other_tokenizer, value_model_init="policy")
    assert trainer.value_model.config.vocab_size == len(trainer.processing_class)


# ---- resume from any checkpoint -----------------------------------------------------------------------------------

RESUME = dict(max_steps=8, save_strategy="steps", save_steps=1, kl_target=0.01, kl_horizon=10)  # 2 rollouts x 4 steps


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_lm_path):
    """8 optimizer steps (2 rollouts of 2 PPO epochs x 2 minibatches, sampled generation), a checkpoint at each."""
    trainer = make(tmp_path_factory.mktemp("full"), tiny_lm_path, **RESUME)
    trainer.train()
    return trainer


@pytest.mark.parametrize("step", range(1, 8))
def test_resume_from_any_step_equals_the_uninterrupted_run(uninterrupted, tmp_path, tiny_lm_path, step):
    checkpoint = f"{uninterrupted.args.output_dir}/checkpoint-{step}"
    resumed = make(tmp_path, tiny_lm_path, **RESUME)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert_same(params(resumed.model), params(uninterrupted.model))
    assert_same(params(resumed.value_model), params(uninterrupted.value_model))
    assert resumed.kl_ctl.value == uninterrupted.kl_ctl.value != 0.05  # the adaptive coefficient moved, and resumed
    # rollouts are sampled at steps 1 and 5 only: resumed mid-rollout, the run finishes the saved one first
    sampled_at = [log["step"] for log in resumed.state.log_history if "objective/scores" in log and log["step"] > step]
    assert sampled_at == ([5] if step < 5 else [])


def test_a_mid_rollout_checkpoint_holds_each_processs_rollout(uninterrupted):
    state = torch.load(f"{uninterrupted.args.output_dir}/checkpoint-3/ppo_rollout_0.pt", weights_only=True)
    assert state["step"] == 3 and len(state["buffered_inputs"]) == 2  # 2 minibatches
    assert state["rollout"]["completion_ids"].size(0) == 8
    boundary = torch.load(f"{uninterrupted.args.output_dir}/checkpoint-4/ppo_rollout_0.pt", weights_only=True)
    assert boundary == {"step": 4, "rollout": None, "buffered_inputs": None}  # the next step samples a new rollout


# ---- the critic's start: value head, learning rate, warm-up ----------------------------------------------------------


def test_a_new_value_head_starts_at_zero_and_a_loaded_one_is_kept(tmp_path, tiny_lm_path, tiny_reward_model_path):
    assert PPOConfig(str(tmp_path), bf16=False).value_head_init == "zero"
    head = make(tmp_path, tiny_lm_path).value_model.score.weight  # from the policy: a new head
    assert torch.count_nonzero(head) == 0
    head = make(tmp_path, tiny_lm_path, value_head_init="normal").value_model.score.weight
    assert torch.count_nonzero(head) == head.numel()
    trainer = make(tmp_path, tiny_lm_path, reward_funcs=tiny_reward_model_path)  # from the reward model: kept
    torch.testing.assert_close(trainer.value_model.score.weight, trainer.reward_funcs[0].score.weight)
    assert torch.count_nonzero(trainer.value_model.score.weight) > 0


def test_value_learning_rate_sets_the_critics_parameter_groups(tmp_path, tiny_lm_path):
    trainer = make(tmp_path, tiny_lm_path, value_learning_rate=0.5)
    optimizer = trainer.create_optimizer()
    critic = {id(p) for p in trainer.value_model.parameters()}
    lrs = {(all(id(p) in critic for p in g["params"]), g["lr"]) for g in optimizer.param_groups if g["params"]}
    assert lrs == {(False, 1e-2), (True, 0.5)}


def test_critic_warmup_trains_only_the_value_model(tmp_path, tiny_lm_path):
    trainer = make(
        tmp_path, tiny_lm_path, critic_warmup_rollouts=1, max_steps=4
    )  # 1 rollout: 2 epochs x 2 minibatches
    policy, critic = params(trainer.model), params(trainer.value_model)
    trainer.train()
    assert_same(params(trainer.model), policy)
    assert any(not torch.equal(p, critic[n]) for n, p in trainer.value_model.named_parameters())


@pytest.mark.parametrize(
    "overrides, field",
    [({"value_head_init": "xavier"}, "value_head_init"), ({"value_learning_rate": 0.0}, "value_learning_rate"),
     ({"critic_warmup_rollouts": -1}, "critic_warmup_rollouts")],
)  # fmt: skip
def test_critic_config_errors_name_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field):
        config(tmp_path, **overrides)
