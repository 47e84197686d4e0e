"""The per-batch rollout record (trl_extras/trainer/_rollout.py): set by one hook, read and cleared by the next, and a
clear error naming the expected hook order when a hook did not run (e.g. a TRL version that stopped calling it)."""

import types
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from trl import GRPOTrainer

from trl_extras import PPOConfig, PPOTrainer, ReMaxConfig, ReMaxTrainer
from trl_extras.trainer import _rollout
from trl_extras.trainer._rollout import Rollout

PROMPTS = ["The movie was", "I think that", "What is the", "Hello there"]


def even_tokens(completion_ids, **kwargs):
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


COMMON = dict(max_completion_length=4, report_to="none", bf16=False, save_strategy="no", seed=0, disable_tqdm=True)


@pytest.fixture(scope="module")
def remax(tmp_path_factory, tiny_lm_path):
    args = ReMaxConfig(str(tmp_path_factory.mktemp("remax")), per_device_train_batch_size=4, **COMMON)
    dataset = Dataset.from_dict({"prompt": PROMPTS * 2})
    return ReMaxTrainer(tiny_lm_path, even_tokens, args=args, train_dataset=dataset)


@pytest.fixture(scope="module")
def ppo(tmp_path_factory, tiny_lm_path):
    args = PPOConfig(
        str(tmp_path_factory.mktemp("ppo")), per_device_train_batch_size=4, num_mini_batches=2, num_ppo_epochs=2,
        **COMMON,
    )  # fmt: skip
    dataset = Dataset.from_dict({"prompt": PROMPTS * 4})
    return PPOTrainer(model=tiny_lm_path, reward_funcs=even_tokens, args=args, train_dataset=dataset)


def _skip_our_calculate_rewards(trainer):
    """What a TRL change that stops calling the `_calculate_rewards` hook looks like to our overrides."""
    trainer._calculate_rewards = types.MethodType(GRPOTrainer._calculate_rewards, trainer)


# ---- the record on its own -----------------------------------------------------------------------------------------


def test_a_missing_field_names_the_hook_that_sets_it_and_the_expected_order():
    with pytest.raises(RuntimeError) as error:
        Rollout().require("rewards_per_func", reader="PPOTrainer._generate_and_score_completions")
    message = str(error.value)
    assert "PPOTrainer._generate_and_score_completions needs the rollout record's `rewards_per_func`" in message
    assert "`_calculate_rewards` did not run before" in message
    assert "calls _generate, then _calculate_rewards" in message  # the order GRPO calls the hooks in
    with pytest.raises(RuntimeError, match="`ReMaxTrainer._generate` sets"):
        Rollout().require("greedy", reader="ReMaxTrainer._calculate_rewards")


def test_consume_reads_once():
    record = Rollout(rewards_per_func=torch.ones(2, 1), greedy_rewards_per_func=torch.zeros(1, 1))
    rewards, greedy = record.consume("rewards_per_func", "greedy_rewards_per_func", reader="reader")
    assert rewards.tolist() == [[1.0], [1.0]] and greedy.tolist() == [[0.0]]
    assert record.rewards_per_func is None and record.greedy_rewards_per_func is None
    with pytest.raises(RuntimeError, match="`rewards_per_func`"):
        record.consume("rewards_per_func", reader="reader")


def test_state_dict_round_trips_through_a_weights_only_load(tmp_path):
    batch = {"completion_ids": torch.arange(6).view(2, 3), "advantages": torch.rand(2, 3)}
    torch.save({"rollout": Rollout(batch=batch).state_dict()}, tmp_path / "r.pt")
    loaded = Rollout.from_state_dict(torch.load(tmp_path / "r.pt", weights_only=True)["rollout"])
    assert loaded.batch.keys() == batch.keys() and all(torch.equal(loaded.batch[k], batch[k]) for k in batch)
    with pytest.raises(RuntimeError, match="`batch`"):
        Rollout().state_dict()


def test_no_record_at_all_says_no_generation_batch_was_started():
    trainer = SimpleNamespace(model=SimpleNamespace(training=True))
    with pytest.raises(RuntimeError, match="PPOTrainer._prepare_inputs found no rollout record for train"):
        _rollout.require(trainer, "batch", reader="PPOTrainer._prepare_inputs")
    _rollout.begin(trainer)
    trainer.model.training = False  # one record per mode: the eval one is separate
    assert _rollout.peek(trainer, "eval") is None and _rollout.peek(trainer, "train") is not None


# ---- ReMax ---------------------------------------------------------------------------------------------------------


def test_remax_record_is_cleared_after_the_batch_and_a_skipped_hook_is_an_error(remax):
    remax.model.train()
    remax.current_gradient_accumulation_steps = 1
    rows = [{"prompt": p} for p in PROMPTS]
    remax._generate_and_score_completions(rows)
    assert _rollout.peek(remax, "train") is None  # created by _generate, consumed and cleared by the last hook

    _skip_our_calculate_rewards(remax)
    try:
        with pytest.raises(
            RuntimeError,
            match=r"ReMaxTrainer._generate_and_score_completions needs the rollout record's `rewards_per_func`, which "
            r"`_calculate_rewards` sets",
        ):
            remax._generate_and_score_completions(rows)
    finally:
        del remax._calculate_rewards


def test_remax_rewards_without_the_greedy_pass_name_generate(remax):
    remax.model.train()
    _rollout.begin(remax)  # a batch in which `_generate` did not run
    with pytest.raises(
        RuntimeError, match=r"ReMaxTrainer._calculate_rewards needs .*`greedy`.*ReMaxTrainer._generate"
    ):
        remax._calculate_rewards([{"prompt": p} for p in PROMPTS], PROMPTS, ["a"] * 4, [[1]] * 4)


# ---- PPO -----------------------------------------------------------------------------------------------------------


def test_ppo_keeps_the_training_rollout_for_its_epochs_and_an_evaluation_leaves_it_alone(ppo):
    ppo.model.train()
    rows = [{"prompt": p} for p in PROMPTS * 2]
    output = ppo._generate_and_score_completions(rows)
    record = _rollout.peek(ppo, "train")
    assert record.batch is output and record.rewards_per_func is None  # rewards consumed, the batch kept
    ppo.model.eval()
    try:
        ppo._generate_and_score_completions(rows[:4])
    finally:
        ppo.model.train()
    assert _rollout.peek(ppo, "train") is record and _rollout.peek(ppo, "eval") is None


def test_ppo_a_skipped_rewards_hook_or_a_lost_rollout_is_an_error(ppo):
    ppo.model.train()
    _skip_our_calculate_rewards(ppo)
    try:
        with pytest.raises(
            RuntimeError, match=r"PPOTrainer._generate_and_score_completions needs .*`_calculate_rewards`"
        ):
            ppo._generate_and_score_completions([{"prompt": p} for p in PROMPTS * 2])
    finally:
        del ppo._calculate_rewards
    # An epoch start (step 2 of 2 x 2) with GRPO's buffer but no training record: reshuffling would be skipped silently
    ppo._step, ppo._buffered_inputs = 2, [{}, {}]
    with pytest.raises(
        RuntimeError,
        match=r"PPOTrainer._prepare_inputs needs the rollout record's `batch`, which "
        r"`PPOTrainer._generate_and_score_completions \(training\)` sets",
    ):
        ppo._prepare_inputs([{"prompt": p} for p in PROMPTS * 2])
