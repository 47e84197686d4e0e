"""PPOTrainer on tiny models: wiring of the rollout, learning, the KL penalty, PEFT/QLoRA, reward models, resuming."""

import os

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trl_extras.losses.ppo import gae_advantages_and_returns
from trl_extras.trainer import _rollout
from trl_extras.trainer.ppo_config import PPOConfig
from trl_extras.trainer.ppo_trainer import PPOTrainer, _check_grpo_loss_fields
from trl_extras.trainer.value_model import per_token_values

PROMPTS = ["The movie was", "I think that", "What is the", "Hello there"]


def even_tokens(completion_ids, **kwargs):
    """Fraction of even token ids in the completion: a reward with a known optimum the tiny policy can learn."""
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


def prompt_dataset(repeats=4):
    return Dataset.from_list([{"prompt": p} for p in PROMPTS * repeats])


def config(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_ppo_epochs=2,
        num_mini_batches=1,
        max_completion_length=4,
        learning_rate=1e-2,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        bf16=False,
        save_strategy="no",
        seed=0,
    )
    kwargs.update(overrides)
    return PPOConfig(**kwargs)


def rollout_logs(trainer, key):
    return [log[key] for log in trainer.state.log_history if key in log]


# the TRL surface is pinned in tests/test_trl_surface.py


# ---- config -------------------------------------------------------------------------------------------------------


def test_config_derives_grpos_knobs_from_the_old_ppo_names(tmp_path):
    args = config(tmp_path, gradient_accumulation_steps=2, num_mini_batches=3, num_ppo_epochs=4, kl_coef=0.1)
    assert args.steps_per_generation == 6  # gradient_accumulation_steps * num_mini_batches
    assert args.generation_batch_size == 48  # the rollout batch: 8 * 2 * 3 episodes
    assert args.num_iterations == 4 and args.beta == 0.1 and args.num_generations == 1
    args = config(tmp_path, max_steps=-1, total_episodes=100, num_mini_batches=2)
    assert args.max_steps == 7 * 2 * 2  # ceil(100 / 16) rollouts * num_ppo_epochs * num_mini_batches


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"num_ppo_epochs": 0}, "num_ppo_epochs"),
        ({"kl_estimator": "k2"}, "kl_estimator"),
        ({"cliprange": 0.0}, "cliprange"),
        ({"lam": 1.5}, "lam"),
        ({"missing_eos_penalty": -1.0}, "missing_eos_penalty"),
        ({"value_model_init": "sft"}, "value_model_init"),
        ({"beta": 0.3}, "beta"),
        ({"num_iterations": 3}, "num_iterations"),
        ({"steps_per_generation": 4}, "steps_per_generation"),
        ({"kl_target": 6.0, "kl_coef": 0.0}, "kl_coef"),
    ],
)
def test_config_errors_name_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field):
        config(tmp_path, **overrides)


def test_grpo_loss_knobs_are_rejected_not_ignored(tmp_path):
    with pytest.raises(ValueError, match="entropy_coef"):
        _check_grpo_loss_fields(config(tmp_path, entropy_coef=0.01))
    _check_grpo_loss_fields(config(tmp_path))


# ---- value model --------------------------------------------------------------------------------------------------


def test_per_token_values_are_the_classifier_read_at_each_prefix(tiny_reward_model_path):
    critic = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path).eval()
    torch.manual_seed(0)
    prompt, completion = torch.randint(3, 300, (2, 5)), torch.randint(3, 300, (2, 3))
    input_ids = torch.cat([prompt, completion], dim=1)
    with torch.no_grad():
        values = per_token_values(critic, input_ids, torch.ones_like(input_ids), logits_to_keep=3)
        # V(s_t) is the reward model's score of the prefix prompt + completion[:t]
        expected = torch.stack([critic(input_ids[:, : 5 + t]).logits[:, 0] for t in range(3)], dim=1)
        torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)
        # left padding of the prompt changes nothing (positions come from the attention mask)
        padded = torch.cat([torch.zeros(2, 2, dtype=torch.long), input_ids], dim=1)
        mask = torch.cat([torch.zeros(2, 2, dtype=torch.long), torch.ones_like(input_ids)], dim=1)
        torch.testing.assert_close(
            per_token_values(critic, padded, mask, logits_to_keep=3), values, atol=1e-5, rtol=1e-5
        )


def test_value_model_init_from_the_policy(tmp_path, tiny_lm_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    trainer = PPOTrainer(
        model=tiny_lm_path, reward_funcs=even_tokens, args=config(tmp_path), train_dataset=prompt_dataset(),
        processing_class=tokenizer,
    )  # fmt: skip
    assert trainer.args.value_model_init is None  # no reward model among the rewards -> from the policy
    policy_backbone = trainer.model.model.state_dict()
    for name, tensor in trainer.value_model.model.state_dict().items():
        torch.testing.assert_close(tensor, policy_backbone[name])
    assert trainer.value_model.score.weight.shape == (1, trainer.model.config.hidden_size)


# ---- rollout wiring -----------------------------------------------------------------------------------------------


def test_rollout_rewards_kl_eos_penalty_and_gae_by_hand(tmp_path, tiny_lm_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    args = config(tmp_path, kl_coef=0.3, missing_eos_penalty=2.0, whiten_advantages=False, gamma=0.9, lam=0.8)
    trainer = PPOTrainer(
        model=tiny_lm_path, reward_funcs=even_tokens, args=args, train_dataset=prompt_dataset(),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.model.train()
    out = trainer._generate_and_score_completions([{"prompt": p} for p in PROMPTS * 2])
    eos = tokenizer.eos_token_id
    for b in range(out["completion_ids"].size(0)):
        n = int(out["completion_mask"][b].sum())
        ids = out["completion_ids"][b, :n].tolist()
        score = even_tokens([ids])[0] - (2.0 if ids[-1] != eos else 0.0)
        kl = (out["old_per_token_logps"][b, :n] - out["ref_per_token_logps"][b, :n]).tolist()  # k1
        rewards = [-0.3 * k for k in kl]
        rewards[-1] += score  # the score sits on the last completion token
        values = out["values"][b, :n].tolist() + [0.0]
        advantage, expected = 0.0, []
        for t in reversed(range(n)):
            advantage = rewards[t] + 0.9 * values[t + 1] - values[t] + 0.9 * 0.8 * advantage
            expected.insert(0, advantage)
        torch.testing.assert_close(out["advantages"][b, :n], torch.tensor(expected), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["returns"][b, :n], torch.tensor(expected) + out["values"][b, :n])
    # the critic's values are V(s_t) of the rollout, and only real tokens train
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        values = per_token_values(trainer.value_model, input_ids, attention_mask, out["completion_ids"].size(1))
    torch.testing.assert_close(out["values"], values * out["completion_mask"])
    assert torch.equal(out["ppo_mask"], out["completion_mask"])
    # GRPO's sequence-level advantages are replaced by per-token ones
    assert out["advantages"].shape == out["completion_ids"].shape
    advantages, _ = gae_advantages_and_returns(
        torch.zeros_like(out["values"]), out["values"], out["completion_mask"], 0.9, 0.8
    )
    assert not torch.allclose(out["advantages"], advantages)


def test_each_ppo_epoch_reshuffles_the_rollout_into_new_minibatches(tmp_path, tiny_lm_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    args = config(tmp_path, per_device_train_batch_size=4, num_mini_batches=2, num_ppo_epochs=2)
    trainer = PPOTrainer(
        model=tiny_lm_path, reward_funcs=even_tokens, args=args, train_dataset=prompt_dataset(),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.model.train()
    batch = [{"prompt": p} for p in PROMPTS * 2]  # one rollout: 2 minibatches of 4

    def rows(inputs):
        return {tuple(r) for r in torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1).tolist()}

    epochs = []
    for epoch in range(2):
        minibatches = []
        for step in range(2):
            trainer._step = 2 * epoch + step
            minibatches.append(rows(trainer._prepare_inputs(batch)))
        epochs.append(minibatches)
    assert trainer._step == 3  # no new rollout was generated for the second epoch
    for minibatches in epochs:  # every epoch covers the whole rollout once
        assert minibatches[0].isdisjoint(minibatches[1])
        assert minibatches[0] | minibatches[1] == rows(_rollout.peek(trainer, "train").batch)
    assert epochs[0][0] != epochs[1][0] and epochs[0][0] != epochs[1][1]  # a new split (fixed seed)


# ---- training -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def even_token_runs(tmp_path_factory, tiny_lm_path):
    """Two PPO runs on the even-token reward from the same start: a weak and a strong KL penalty."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    runs = {}
    for kl_coef in (0.01, 1.0):
        args = config(
            tmp_path_factory.mktemp("ppo"), per_device_train_batch_size=32, num_ppo_epochs=4, learning_rate=3e-2,
            kl_coef=kl_coef, max_steps=12, logging_steps=4,
        )  # fmt: skip
        trainer = PPOTrainer(
            model=tiny_lm_path, reward_funcs=even_tokens, args=args, train_dataset=prompt_dataset(8),
            processing_class=tokenizer,
        )  # fmt: skip
        trainer.value_before = {n: p.detach().clone() for n, p in trainer.value_model.named_parameters()}
        trainer.train()
        runs[kl_coef] = trainer
    return runs


def test_learns_a_programmatic_reward_and_logs_the_old_ppo_metrics(even_token_runs):
    trainer = even_token_runs[0.01]
    scores = rollout_logs(trainer, "objective/scores")  # one rollout per log: 4 optimizer steps each
    assert len(scores) == 3
    assert scores[-1] > scores[0] + 0.1, scores  # about half the tokens are even at first
    for name in (
        "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
        "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg",
        "val/ratio",
    ):  # fmt: skip
        assert len(rollout_logs(trainer, name)) == 3, name
    non_scores = rollout_logs(trainer, "objective/non_score_reward")
    for rlhf, score, non_score in zip(rollout_logs(trainer, "objective/rlhf_reward"), scores, non_scores):
        assert rlhf == pytest.approx(score + non_score, abs=1e-5)
    assert all(0.0 <= c <= 1.0 for c in rollout_logs(trainer, "policy/clipfrac_avg"))
    # the critic is trained by the same optimizer
    assert any(not torch.equal(p, trainer.value_before[n]) for n, p in trainer.value_model.named_parameters())


def test_kl_penalty_bounds_the_drift_from_the_reference(even_token_runs):
    kls = {kl_coef: rollout_logs(trainer, "objective/kl") for kl_coef, trainer in even_token_runs.items()}
    for kl_coef, trainer in even_token_runs.items():
        assert kls[kl_coef][0] == pytest.approx(0.0, abs=1e-5)  # the first rollout samples from the reference itself
        for kl, non_score in zip(kls[kl_coef], rollout_logs(trainer, "objective/non_score_reward"), strict=True):
            assert non_score == pytest.approx(-kl_coef * kl, abs=1e-5)  # the reward's KL term
    # the reward gains at most 1 - 0.5, so a coefficient of 1 is worth little KL; 0.01 lets the policy run off.
    # The first rollout has KL 0 (policy = reference), so both runs make the same first update: the penalty acts on
    # the growth from the second rollout on.
    assert kls[0.01][-1] > 2.0, kls
    assert kls[1.0][-1] - kls[1.0][1] < 0.5 * (kls[0.01][-1] - kls[0.01][1]), kls


def test_peft_lora_policy_with_the_disabled_adapter_as_reference(tmp_path, tiny_lm_path):
    from peft import LoraConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    args = config(tmp_path, max_steps=4, logging_steps=2, learning_rate=3e-2)  # two rollouts
    trainer = PPOTrainer(
        model=tiny_lm_path, reward_funcs=even_tokens, args=args, train_dataset=prompt_dataset(),
        processing_class=tokenizer, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )  # fmt: skip
    assert trainer.ref_model is None  # no second copy of the policy
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    trainer.train()
    kls = rollout_logs(trainer, "objective/kl")
    assert kls[0] == pytest.approx(0.0, abs=1e-5)  # a fresh adapter is the base model
    assert kls[1] > 1e-4  # after an update, the disabled adapter (the reference) differs from the policy
    for name, param in trainer.model.named_parameters():
        if name in base_before:
            assert torch.equal(param, base_before[name]), name
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if n in lora_before)


def test_qlora_policy(tmp_path, tiny_lm_path):
    from trl_extras.quantization import QLoRAConfig, load_qlora_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    model = load_qlora_model(tiny_lm_path, QLoRAConfig(lora_r=4, lora_alpha=8, bnb_4bit_compute_dtype="float32"))
    trainer = PPOTrainer(
        model=model, reward_funcs=even_tokens, args=config(tmp_path, max_steps=2), train_dataset=prompt_dataset(),
        processing_class=tokenizer, value_model=tiny_lm_path,
    )  # fmt: skip
    assert trainer.ref_model is None
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    trainer.train()
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if n in lora_before)
    assert all(not p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" not in n)
    assert rollout_logs(trainer, "objective/kl")[0] == pytest.approx(0.0, abs=1e-4)  # fresh adapter == reference


def test_reward_model_as_reward_and_as_the_value_models_init(tmp_path, tiny_lm_path, tiny_reward_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    trainer = PPOTrainer(
        model=tiny_lm_path, reward_funcs=tiny_reward_model_path, args=config(tmp_path), train_dataset=prompt_dataset(),
        processing_class=tokenizer,
    )  # fmt: skip
    reward_model = trainer.reward_funcs[0]
    assert trainer.value_model is not reward_model
    for (name, value_param), reward_param in zip(trainer.value_model.named_parameters(), reward_model.parameters()):
        torch.testing.assert_close(value_param, reward_param, msg=name)  # the classic init: critic = reward model
    reward_before = [p.detach().clone() for p in reward_model.parameters()]
    trainer.train()
    metrics = trainer.evaluate(prompt_dataset(1))  # evaluation runs a rollout and the PPO loss, without updates
    assert "eval_loss" in metrics and "eval_objective/scores" in metrics
    # the score is the reward model's output, and only the critic trains
    assert rollout_logs(trainer, "objective/scores")[0] == pytest.approx(rollout_logs(trainer, "reward")[0], abs=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(reward_model.parameters(), reward_before, strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(trainer.value_model.parameters(), reward_before, strict=True))


def test_save_reload_and_resume_continue_the_same_run(tmp_path, tiny_lm_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)

    def make(output_dir):
        args = config(
            tmp_path, output_dir=str(output_dir), per_device_train_batch_size=4, num_mini_batches=2, max_steps=8,
            save_strategy="steps", save_steps=4, kl_coef=0.05, kl_target=0.01, kl_horizon=10,
        )  # fmt: skip
        return PPOTrainer(
            model=tiny_lm_path, reward_funcs=even_tokens, args=args, train_dataset=prompt_dataset(),
            processing_class=tokenizer,
        )  # fmt: skip

    full = make(tmp_path / "full")
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-4"  # one rollout in: 2 epochs x 2 minibatches
    assert (checkpoint / "value_model" / "config.json").exists() and (checkpoint / "ppo_state.json").exists()
    assert full.kl_ctl.value != 0.05  # the adaptive controller moved, so restoring it matters

    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    for (name, p), q in zip(full.value_model.named_parameters(), resumed.value_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    assert resumed.kl_ctl.value == pytest.approx(full.kl_ctl.value)

    # the final save holds the policy and the critic, both loadable with from_pretrained
    full.save_model()
    out = tmp_path / "full"
    policy = AutoModelForCausalLM.from_pretrained(out)
    critic = AutoModelForSequenceClassification.from_pretrained(out / "value_model")
    assert os.path.exists(out / "value_model" / "tokenizer_config.json")
    for (name, p), q in zip(full.model.named_parameters(), policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    for (name, p), q in zip(full.value_model.named_parameters(), critic.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_bad_prompt_dataset_is_rejected_up_front(tmp_path, tiny_lm_path):
    from trl_extras.data import PreferenceDataError

    dataset = Dataset.from_list([{"prompt": "fine"}, {"prompt": ""}])
    with pytest.raises(PreferenceDataError, match="Row 1"):
        PPOTrainer(model=tiny_lm_path, reward_funcs=even_tokens, args=config(tmp_path), train_dataset=dataset)
