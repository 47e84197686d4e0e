"""One deterministic PPO or ReMax run, for the multi-process parity tests (`tests/test_ppo_parity.py`).

    python tests/_parity_run.py ppo|remax MODEL_DIR OUT_FILE PER_DEVICE_BATCH STOP_TOKEN [VALUE_MODEL_DIR]
    accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml tests/_parity_run.py ...
    DS_ACCELERATOR=cpu accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 2 \
        --mixed_precision no tests/_parity_run.py ppo ...

Completions that do not depend on how rows are split over processes: greedy for PPO; for ReMax, whose advantage is
r(sample) - r(greedy) and so 0 under greedy sampling, `split_invariant_sampling` (inverse-CDF sampling with one
uniform per decoding step, the same for every row). Plain SGD, 2 rollouts. `STOP_TOKEN` is an extra end-of-sequence
id, so that completions have different lengths. The main process writes the final parameters (policy, and the critic
for PPO) to `OUT_FILE` with `torch.save`.
"""

import contextlib
import os
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The movie was", "I think that it is", "What", "Hello there, how are", "The capital of France",
    "This movie was terrible, boring", "user", "The quick brown fox jumps",
]  # fmt: skip


def even_tokens(completion_ids, **kwargs):
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def common_args(output_dir, per_device_batch):
    # under a DeepSpeed launch (`ACCELERATE_USE_DEEPSPEED`) on the CPU: no `use_cpu` (it turns DeepSpeed off), and the
    # gloo backend for accelerate to count the group DeepSpeed's CPU accelerator forms (docs/cli.md)
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    engine = {"use_cpu": False, "ddp_backend": "gloo"} if deepspeed else {"use_cpu": True}
    return dict(**engine,
        output_dir=output_dir, per_device_train_batch_size=per_device_batch, max_completion_length=6,
        generation_kwargs={"do_sample": False}, optim="sgd", learning_rate=0.05, lr_scheduler_type="constant",
        max_grad_norm=0.0, report_to="none", save_strategy="no", bf16=False, seed=0,
        logging_steps=1, disable_tqdm=True,
    )  # fmt: skip


@contextlib.contextmanager
def split_invariant_sampling():
    """`torch.multinomial` as inverse-CDF sampling with the uniform `u_t` of decoding step `t` for every row.

    A row's tokens then depend on its own probabilities only, not on which rows share its batch or process (torch's
    sampler draws one random stream for the whole batch). `u_t` restarts with every `generate` call.
    """
    import transformers.generation.utils as generation_utils

    step = [0]
    multinomial, generate = torch.multinomial, generation_utils.GenerationMixin.generate

    def sample(probs, num_samples, *args, **kwargs):
        u = (0.5 + 0.6180339887 * step[0]) % 1.0
        step[0] += 1
        cdf = probs.float().cumsum(-1) / probs.float().sum(-1, keepdim=True)
        return (cdf < u).sum(-1, keepdim=True).clamp(max=probs.size(-1) - 1).repeat(1, num_samples)

    def generate_from_step_0(self, *args, **kwargs):
        step[0] = 0
        return generate(self, *args, **kwargs)

    torch.multinomial, generation_utils.GenerationMixin.generate = sample, generate_from_step_0
    try:
        yield
    finally:
        torch.multinomial, generation_utils.GenerationMixin.generate = multinomial, generate


def train(kind, model_dir, output_dir, per_device_batch, stop_token, value_model_dir=None, **overrides):
    """Train; return the final parameters (on the main process) and the mean completion length of each rollout."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop_token]
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS * 4])
    if kind == "ppo":
        from trl_extras import PPOConfig, PPOTrainer

        args = PPOConfig(
            **common_args(output_dir, per_device_batch), num_ppo_epochs=2, kl_coef=0.1, max_steps=4, **overrides
        )
        trainer = PPOTrainer(
            model=model, reward_funcs=even_tokens, args=args, train_dataset=dataset, processing_class=tokenizer,
            value_model=value_model_dir,
        )  # fmt: skip
    else:
        from trl_extras import ReMaxConfig, ReMaxTrainer

        common = {**common_args(output_dir, per_device_batch), "generation_kwargs": {"do_sample": True}}
        args = ReMaxConfig(**common, num_generations=1, beta=0.1, max_steps=2, **overrides)
        trainer = ReMaxTrainer(
            model=model, reward_funcs=even_tokens, args=args, train_dataset=dataset, processing_class=tokenizer
        )
    with split_invariant_sampling() if kind == "remax" else contextlib.nullcontext():
        trainer.train()
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)  # under an engine, PPO's PolicyAndValueWrapper
    policy = getattr(unwrapped, "policy", unwrapped)
    state = {f"policy.{n}": p.detach().clone() for n, p in policy.named_parameters()}
    if kind == "ppo":
        value_model = getattr(unwrapped, "value_model", trainer.value_model)
        state.update({f"value.{n}": p.detach().clone() for n, p in value_model.named_parameters()})
    state["distributed_type"] = trainer.accelerator.distributed_type.value
    state["num_processes"] = torch.tensor(trainer.accelerator.num_processes)
    state["completion_lengths"] = torch.tensor(
        [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    )
    return state, trainer.accelerator.is_main_process


def main(kind, model_dir, out_file, per_device_batch, stop_token, value_model_dir=None):
    state, is_main_process = train(kind, model_dir, out_file + ".run", per_device_batch, stop_token, value_model_dir)
    if is_main_process:
        torch.save(state, out_file)


if __name__ == "__main__":
    kind, model_dir, out_file, per_device_batch, stop_token, *rest = sys.argv[1:]
    main(kind, model_dir, out_file, int(per_device_batch), int(stop_token), *rest)
