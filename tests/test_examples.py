"""Every script in examples/ runs as a user runs it (`python examples/<name>.py <flags>`, here `runpy` as `__main__`
with those flags in `sys.argv`) for two optimizer steps on its offline defaults, in this process: the imports and the
session's cached built-in models are paid once, not once per script. Each run is checked for what a user looks at:
two steps taken, a finite loss logged at each, and a saved model that loads with the trained weights."""

import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSequenceClassification

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

FAST = ("--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none")
TEXT = (*FAST, "--per_device_train_batch_size", "4")
ONLINE = (*TEXT, "--max_completion_length", "8")

# example -> (flags, the class that loads what it saved)
CASES = {
    "sft": ((*TEXT, "--max_length", "64"), AutoModelForCausalLM),
    "reward": (TEXT, AutoModelForSequenceClassification),
    "dpo": (TEXT, AutoModelForCausalLM),
    "unlikelihood": (TEXT, AutoModelForCausalLM),
    "grpo": ((*ONLINE, "--num_generations", "2"), AutoModelForCausalLM),
    "rloo": ((*ONLINE, "--num_generations", "2"), AutoModelForCausalLM),
    "remax": (ONLINE, AutoModelForCausalLM),
    "ppo": (ONLINE, AutoModelForCausalLM),
    "mdpo": ((*FAST, "--per_device_train_batch_size", "2"), AutoModelForImageTextToText),
    "diffusion_dpo": (("--max_train_steps", "2", "--train_batch_size", "2", "--checkpointing_steps", "100"), None),
}


def test_every_example_is_covered():
    assert sorted([*CASES, "ppo_legacy"]) == sorted(path.stem for path in EXAMPLES.glob("*.py"))


@pytest.fixture
def run_example(builtin_cache, tmp_path, monkeypatch):
    """Run examples/<name>.py as `__main__` with `flags`; return its trainer (the one it ended, else its global)."""

    def run(name, *flags):
        ended = []
        end = transformers.Trainer.end

        def record(self):
            ended.append(self)
            return end(self)

        monkeypatch.setattr(transformers.Trainer, "end", record)
        monkeypatch.chdir(tmp_path)  # anything written to a relative path stays in the test's directory
        monkeypatch.setattr(sys, "argv", [str(EXAMPLES / f"{name}.py"), *flags])
        namespace = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
        trainer = ended[0] if ended else namespace.get("trainer")
        assert trainer is not None, f"examples/{name}.py built no trainer"
        return trainer

    return run


def assert_trained_two_steps(trainer):
    assert trainer.state.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), trainer.state.log_history


def assert_same_weights(saved, trained, start=None):
    """`saved` holds `trained`'s weights (and, given `start`, at least one differs from the starting model's)."""
    trained_state = {name: tensor.detach().cpu() for name, tensor in trained.state_dict().items()}
    saved_state = saved.state_dict()
    assert saved_state.keys() == trained_state.keys()
    for name, tensor in saved_state.items():
        torch.testing.assert_close(tensor, trained_state[name], msg=lambda m, name=name: f"{name}: {m}")
    if start is not None:
        start_state = start.state_dict()
        assert any(not torch.equal(saved_state[name], start_state[name]) for name in saved_state), "nothing trained"


@pytest.mark.parametrize("name", [name for name in CASES if name != "diffusion_dpo"])
def test_example_trains_two_steps_and_saves_a_loadable_model(name, run_example, tmp_path):
    flags, model_class = CASES[name]
    out = tmp_path / "out"
    trainer = run_example(name, "--output_dir", str(out), *flags)
    assert_trained_two_steps(trainer)
    start = model_class.from_pretrained(trainer.model.config._name_or_path)  # the offline default the script chose
    assert_same_weights(model_class.from_pretrained(out), trainer.model, start)
    if name == "ppo":  # the critic is saved beside the policy
        assert_same_weights(
            AutoModelForSequenceClassification.from_pretrained(out / "value_model"), trainer.value_model
        )


def test_diffusion_dpo_example_takes_diffusers_flags_and_saves_lora_weights(run_example, tmp_path):
    from diffusers import DiffusionPipeline

    flags, _ = CASES["diffusion_dpo"]
    out = tmp_path / "out"
    trainer = run_example("diffusion_dpo", "--output_dir", str(out), "--beta_dpo", "100", *flags)
    assert_trained_two_steps(trainer)
    assert trainer.args.beta == 200  # diffusers' beta_dpo is half of ours: the same objective
    assert trainer.args.per_device_train_batch_size == 2 and trainer.args.random_flip  # diffusers flips by default
    pipeline = DiffusionPipeline.from_pretrained(trainer.pipeline.name_or_path)
    before = {name: p.detach().clone() for name, p in pipeline.unet.named_parameters()}
    pipeline.load_lora_weights(out)  # what diffusers' own script writes, loaded the way its README says
    pipeline.fuse_lora()
    after = {
        name.replace(".base_layer", ""): p
        for name, p in pipeline.unet.named_parameters()
        if name in before or ".base_layer." in name
    }
    changed = [name for name, p in after.items() if not torch.equal(p, before[name])]
    assert changed and all(any(key in name for key in ("to_q", "to_k", "to_v", "to_out")) for name in changed)


def test_diffusion_dpo_example_rank_0_trains_and_saves_the_whole_pipeline(run_example, tmp_path):
    from diffusers import DiffusionPipeline

    flags, _ = CASES["diffusion_dpo"]
    out = tmp_path / "out"
    trainer = run_example("diffusion_dpo", "--output_dir", str(out), "--rank", "0", *flags)
    assert_trained_two_steps(trainer)
    assert not trainer.is_peft
    start = DiffusionPipeline.from_pretrained(trainer.pipeline.name_or_path).unet
    assert_same_weights(DiffusionPipeline.from_pretrained(out).unet, trainer.pipeline.unet, start)


def test_ppo_legacy_example_trains_two_rollouts(run_example, tmp_path):
    """examples/ppo_legacy.py is TRL 1.12's PPO script with the import swapped; tests/test_ppo_legacy.py checks its
    console in a subprocess, this checks the trainer it built."""
    out = tmp_path / "out"
    flags = ("--output_dir", str(out), "--total_episodes", "8", "--per_device_train_batch_size", "4")
    flags += ("--num_ppo_epochs", "1", "--response_length", "6", "--per_device_eval_batch_size", "50")
    flags += ("--bf16", "False", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1")
    trainer = run_example("ppo_legacy", *flags)
    assert_trained_two_steps(trainer)
    assert_same_weights(AutoModelForCausalLM.from_pretrained(out), trainer.model)
    assert_same_weights(AutoModelForSequenceClassification.from_pretrained(out / "value_model"), trainer.value_model)
