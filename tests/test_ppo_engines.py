"""PPO under the engines that shard the module they prepare (FSDP2, DeepSpeed ZeRO): policy and critic are one module,
`PolicyAndValueWrapper`, called through its root for both heads.

- FSDP2: accelerate falls back from FSDP to MULTI_CPU without GPUs, so the sharding itself is tested: the wrapper
  prepared by accelerate's `fsdp2_prepare_model` over 2 gloo processes (`tests/_fsdp2_ppo_run.py`): one PPO update
  through both heads equals the unsharded one, and the gathered, split state dict is what `PPOTrainer._save` writes.
- DeepSpeed ZeRO-2 and ZeRO-3: `trl-extras ppo` for 2 steps on the CPU (DeepSpeed's CPU accelerator), when
  `deepspeed` is importable (CI: `pip install deepspeed hjson ninja py-cpuinfo msgpack einops`).
"""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from trl_extras.trainer.value_model import PolicyAndValueWrapper, per_token_values

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wrapper(tiny_lm_path, tiny_reward_model_path):
    policy = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    critic = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path, num_labels=1)
    return PolicyAndValueWrapper(policy, critic)


def test_each_head_is_the_submodules_own_forward(wrapper):
    input_ids = torch.tensor([[5, 6, 7, 8, 9], [0, 6, 9, 11, 4]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    with torch.no_grad():
        logits = wrapper(input_ids=input_ids, attention_mask=attention_mask).logits
        values = wrapper(input_ids, attention_mask, 3, head="value")
        assert torch.equal(logits, wrapper.policy(input_ids=input_ids, attention_mask=attention_mask).logits)
        assert torch.equal(values, per_token_values(wrapper.value_model, input_ids, attention_mask, 3))
    assert values.shape == (2, 3)
    with pytest.raises(ValueError, match="`head` must be 'policy' or 'value', got 'critic'"):
        wrapper(input_ids, attention_mask, 3, head="critic")


def test_the_trainer_sees_the_policys_attributes_and_the_layers_of_both(wrapper):
    assert wrapper.config is wrapper.policy.config and wrapper.generation_config is wrapper.policy.generation_config
    assert wrapper.is_gradient_checkpointing is False
    assert wrapper._no_split_modules == ["LlamaDecoderLayer"]  # what FSDP's transformer-based auto wrap shards
    with pytest.raises(AttributeError):
        wrapper.no_such_attribute  # noqa: B018


def test_split_state_dict_gives_each_model_its_own_keys(wrapper):
    policy_state, value_state = wrapper.split_state_dict(wrapper.state_dict())
    assert policy_state.keys() == wrapper.policy.state_dict().keys()
    assert value_state.keys() == wrapper.value_model.state_dict().keys()
    with pytest.raises(ValueError, match="'ref.lm_head.weight' is neither `policy.\\*` nor `value_model.\\*`"):
        wrapper.split_state_dict({"ref.lm_head.weight": torch.zeros(1)})


def _train(tmp_path, lm, critic, through_wrapper: bool):
    from datasets import Dataset

    from trl_extras import PPOConfig, PPOTrainer

    args = PPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_ppo_epochs=2, max_completion_length=4,
        learning_rate=1e-2, value_learning_rate=3e-2, max_steps=2, max_grad_norm=0.5, report_to="none", bf16=False,
        save_strategy="no", seed=0, use_cpu=True,
    )  # fmt: skip
    prompts = Dataset.from_list([{"prompt": p} for p in ["The movie was", "I think", "What is", "Hello"] * 4])
    trainer = PPOTrainer(
        model=lm, reward_funcs=lambda completion_ids, **kw: [len(c) % 3 / 2 for c in completion_ids], args=args,
        train_dataset=prompts, value_model=critic,
    )  # fmt: skip
    if through_wrapper:  # what DeepSpeed/FSDP get, with no engine: the same trainer code path, on one process
        trainer._policy_and_value = PolicyAndValueWrapper(trainer.model, trainer.value_model)
    trainer.train()
    trainer.save_model()
    return trainer


def test_the_engine_path_without_an_engine_trains_and_saves_as_the_default_path(
    tiny_lm_path, tiny_reward_model_path, tmp_path
):
    """The engine path (one module in `_prepare_for_training`, values through its root, its optimizer groups and
    clipping, `_save` splitting its state dict) on one process gives the default path's run, weight for weight."""
    default = _train(tmp_path / "default", tiny_lm_path, tiny_reward_model_path, through_wrapper=False)
    wrapped = _train(tmp_path / "wrapped", tiny_lm_path, tiny_reward_model_path, through_wrapper=True)
    assert wrapped.model is wrapped._policy_and_value and default.model is not default._policy_and_value
    assert [g["lr"] for g in wrapped.optimizer.param_groups] == [g["lr"] for g in default.optimizer.param_groups]
    moved = 0
    for name, directory in (("policy", ""), ("critic", "value_model")):
        load = AutoModelForCausalLM if name == "policy" else AutoModelForSequenceClassification
        kwargs = {} if name == "policy" else {"num_labels": 1}
        initial = load.from_pretrained(tiny_lm_path if name == "policy" else tiny_reward_model_path, **kwargs)
        a = load.from_pretrained(tmp_path / "default" / directory, **kwargs).state_dict()
        b = load.from_pretrained(tmp_path / "wrapped" / directory, **kwargs).state_dict()
        assert a.keys() == b.keys() == initial.state_dict().keys(), name
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=f"{name} {key}")
            moved += not torch.equal(a[key], initial.state_dict()[key])
    assert moved > 10  # both models trained, so the comparison means something


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fsdp2_sharded_update_through_both_heads_equals_unsharded(tiny_lm_path, tiny_reward_model_path, tmp_path):
    out = tmp_path / "fsdp2.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        str(REPO / "tests/_fsdp2_ppo_run.py"), tiny_lm_path, tiny_reward_model_path, str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(out.read_text())
    assert run["world_size"] == 2
    assert run["not_sharded"] == []  # every parameter, policy's and critic's, is a DTensor shard
    # accelerate's TRANSFORMER_BASED_WRAP found the decoder layers of both models through the wrapper
    assert {"", "value_model.model.layers.0", "policy.model.layers.1"} <= set(run["fsdp_units"]), run["fsdp_units"]
    assert min(run["grad_max"]) > 1e-4  # both heads got a gradient, so the comparison is not vacuous
    assert run["grad_diff"] < 1e-6, run
    assert run["param_diff"] < 1e-6, run  # after one AdamW step
    assert run["saved_policy_diff"] < 1e-6 and run["saved_value_diff"] < 1e-6, run
    assert run["saved_keys"][:2] == run["saved_keys"][2:]  # every key of both models, nothing else
    assert run["same_generation"]  # `generate` through the sharded root = the unsharded policy's, greedy


# ---- DeepSpeed ----------------------------------------------------------------------------------------------------


def _deepspeed_missing() -> str | None:
    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (pip install deepspeed hjson ninja py-cpuinfo msgpack einops)"
    return None


def _before_reward_without_an_engine(eval_samples: int, max_new_tokens: int) -> str:
    from transformers import AutoTokenizer

    from trl_extras.tasks import registry

    path = registry.resolve_builtin_model("builtin:sentiment-sft")
    plain = SimpleNamespace(  # what `Evaluation.measure` reads of a trainer, with no engine
        model=AutoModelForCausalLM.from_pretrained(path), processing_class=AutoTokenizer.from_pretrained(path),
        accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None)),
    )  # fmt: skip
    evaluation = registry.evaluation_for(
        "builtin:sentiment", "policy", num_samples=eval_samples, max_new_tokens=max_new_tokens
    )
    return evaluation.format(evaluation.measure(plain)[0])


# ZeRO-2 on one process runs in the LoRA and resume tests below (same CLI path, critic reload checked there)
@pytest.mark.parametrize("stage, processes", [("zero3", 1), ("zero2", 2)])
def test_ppo_cli_runs_two_steps_under_deepspeed_on_the_cpu(stage, processes, builtin_cache, tmp_path):
    reason = _deepspeed_missing()
    if reason:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    out = tmp_path / "out"
    command = [
        str(Path(sys.executable).parent / "trl-extras"), "ppo", "--config", "configs/ppo.yaml",
        "--accelerate_config", f"configs/accelerate/{stage}.yaml", "--num_processes", str(processes), "--mixed_precision", "no",
        "--max_steps", "2", "--learning_rate", "1e-3", "--logging_steps", "1", "--per_device_train_batch_size", "4", "--eval_samples", "4",
        "--output_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    # 2 CPU processes too: the CLI gives them `--ddp_backend gloo`, not `use_cpu` (which would fall back to MULTI_CPU)
    assert f"Running on {processes} process(es), DEEPSPEED" in result.stdout, result.stdout[-3000:]
    assert "asks for DEEPSPEED, but this run is" not in result.stdout
    # The before/after report ran (under ZeRO-3 on weights gathered from their partitions): the reward measured
    # before training is the one the same measurement gives on the unpartitioned model, sample for sample
    before = re.search(r"before training: ([-+]\d\.\d{4})", result.stdout)
    assert before is not None and "-> after" in result.stdout, result.stdout[-3000:]
    assert before.group(1) == _before_reward_without_an_engine(eval_samples=4, max_new_tokens=32)
    _check_saved(out)


def _check_saved(out: Path) -> None:
    # the policy at output_dir and the critic in value_model/, gathered from the engine
    policy, policy_info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    critic, critic_info = AutoModelForSequenceClassification.from_pretrained(
        out / "value_model", num_labels=1, output_loading_info=True
    )
    for info in (policy_info, critic_info):  # every weight written, under its own model's names
        assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert all(torch.isfinite(p).all() for p in [*policy.parameters(), *critic.parameters()])
    # The value head starts at zero (also under ZeRO-3, where it is built partitioned) and moved: two AdamW steps of
    # lr 1e-3 move a weight by at most about 2e-3 (a random head, initializer_range 0.02, has larger weights)
    head = critic.score.weight
    assert 0 < head.abs().max() < 3e-3, head.abs().max()


def _ppo_cli(out: Path, *extra: str, stage: str = "zero2") -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "trl-extras"), "ppo", "--config", "configs/ppo.yaml",
        "--accelerate_config", f"configs/accelerate/{stage}.yaml", "--num_processes", "1", "--mixed_precision", "no",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--per_device_train_batch_size", "4", "--eval_samples", "0",
        "--output_dir", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Running on 1 process(es), DEEPSPEED" in result.stdout, result.stdout[-3000:]
    return result


def test_ppo_resumed_from_a_zero2_checkpoint_ends_as_the_uninterrupted_run(builtin_cache, tmp_path):
    """4 steps (one rollout, 2 minibatches), a checkpoint (DeepSpeed's own: `global_step<N>/`, plus PPO's rollout and
    critic) at each; resumed from step 3, mid-rollout, the run ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    if _deepspeed_missing():
        pytest.skip(_deepspeed_missing())
    steps = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "1", "--num_mini_batches", "2")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _ppo_cli(full, *steps)
    assert (full / "checkpoint-3" / "global_step3").is_dir()
    resumed.mkdir()
    subprocess.run(["cp", "-r", str(full / "checkpoint-3"), str(resumed)], check=True)
    _ppo_cli(resumed, *steps, "--resume_from_checkpoint", str(resumed / "checkpoint-3"))
    for weights in ("model.safetensors", "value_model/model.safetensors"):
        a, b = load_file(full / weights), load_file(resumed / weights)
        start = load_file(full / "checkpoint-3" / weights)
        assert a.keys() == b.keys() == start.keys(), weights
        assert any(not torch.equal(a[k], start[k]) for k in a), f"{weights}: step 4 did not move it"
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=f"{weights} {key}")


def test_ppo_with_lora_trains_the_same_adapter_under_zero2_and_zero3(builtin_cache, tmp_path):
    """`--use_peft true`: the policy's LoRA adapter in the engine beside the full critic. Both stages save an adapter
    that loads on the base model, the same one (ZeRO-3 gathers what ZeRO-2 holds whole), and a whole critic."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from trl_extras.tasks import registry

    if _deepspeed_missing():
        pytest.skip(_deepspeed_missing())
    adapters = {}
    for stage in ("zero2", "zero3"):
        out = tmp_path / stage
        _ppo_cli(out, "--max_steps", "2", "--use_peft", "true", stage=stage)
        adapters[stage] = load_file(out / "adapter_model.safetensors")
        assert not (out / "model.safetensors").exists()  # the adapter only, not a merged policy
        critic, info = AutoModelForSequenceClassification.from_pretrained(
            out / "value_model", num_labels=1, output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"], (stage, info)
        assert 0 < critic.score.weight.abs().max() < 3e-3  # the zero-initialised head trained
    base = AutoModelForCausalLM.from_pretrained(registry.resolve_builtin_model("builtin:sentiment-sft"))
    PeftModel.from_pretrained(base, tmp_path / "zero3")  # loads on the base model
    zero2, zero3 = adapters["zero2"], adapters["zero3"]
    assert zero2.keys() == zero3.keys() and any("lora_B" in key for key in zero2)
    assert max(zero2[k].abs().max() for k in zero2 if "lora_B" in k) > 1e-4  # lora_B starts at 0: it trained
    for key in zero2:
        torch.testing.assert_close(zero3[key], zero2[key], rtol=0, atol=1e-6, msg=key)
