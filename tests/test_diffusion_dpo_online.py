"""Online Diffusion-DPO: sample K images per prompt, score them with GRPO-style reward functions, train on the best
versus the worst. That both modes raise a known reward: test_diffusion_dpo_rewards.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_extras.losses.diffusion_dpo import best_and_worst
from trl_extras.trainer.diffusion_dpo_config import DiffusionDPOConfig

diffusers = pytest.importorskip("diffusers")


def redness(prompts, completions, **kwargs):
    """How red each image is: mean of R - (G + B) / 2, in [-1, 1]."""
    scores = []
    for image in completions:
        pixels = np.asarray(image, dtype=np.float32) / 255
        scores.append(float((pixels[..., 0] - 0.5 * (pixels[..., 1] + pixels[..., 2])).mean()))
    return scores


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    from trl_extras.testing import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

    root = tmp_path_factory.mktemp("tiny-online")
    return {"sd3": build_tiny_sd3_pipeline(root / "sd3"), "flux": build_tiny_flux_pipeline(root / "flux")}


def _config(output_dir, **kwargs):
    defaults = dict(
        bf16=False, report_to="none", per_device_train_batch_size=2, max_steps=1, logging_steps=1,
        learning_rate=1e-3, gradient_checkpointing=False, save_strategy="no", disable_tqdm=True,
        dataloader_pin_memory=False, seed=0, resolution=32, max_sequence_length=16, num_generations=3,
        generation_num_inference_steps=2, lr_scheduler_type="constant",
    )  # fmt: skip
    defaults.update(kwargs)
    return DiffusionDPOConfig(str(output_dir), **defaults)


def test_best_and_worst_per_prompt_with_ties():
    rewards = torch.tensor([[0.1, 0.7, 0.3], [0.5, 0.5, 0.5], [2.0, -1.0, -1.0]])
    best, worst = best_and_worst(rewards)
    assert best.tolist() == [1, 0, 0] and worst.tolist() == [0, 0, 1]  # all equal: one image with itself


def test_online_step_trains_on_the_best_and_worst_sample_and_logs_their_rewards(pipelines, tmp_path):
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    calls, decoded = [], []

    def scored(prompts, completions, trainer_state, colour, **kwargs):
        calls.append({"prompts": list(prompts), "colour": list(colour), "step": trainer_state.global_step})
        return redness(prompts, completions)

    def constant(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    dataset = Dataset.from_list(
        [{"prompt": "a red square", "colour": "red"}, {"prompt": "a blue circle", "colour": "blue"}]
    )
    args = _config(tmp_path, reward_weights=[2.0, 0.5])
    trainer = DiffusionDPOTrainer(pipelines["sd3"], args=args, train_dataset=dataset, reward_funcs=[scored, constant])
    assert trainer.online
    original_decode, original_noise = trainer.family.decode_latents, trainer.noised_latents
    trainer.family.decode_latents = lambda latents: decoded.append(latents) or original_decode(latents)
    steps = []
    trainer.noised_latents = lambda *a, **k: steps.append(original_noise(*a, **k)) or steps[-1]
    trainer.train()

    # K = 3 samples per prompt, scored with the prompt and the dataset's other columns repeated K times
    (call,) = calls
    order = call["prompts"][::3]
    assert sorted(order) == ["a blue circle", "a red square"] and all(
        p == order[i // 3] for i, p in enumerate(call["prompts"])
    )
    assert (
        call["colour"] == [("red" if p == "a red square" else "blue") for p in call["prompts"]] and call["step"] == 0
    )
    (latents,) = decoded
    assert latents.shape == (6, 4, 16, 16)
    images = trainer.family.decode_latents(latents)  # deterministic: the same images the reward saw
    rewards = 2.0 * torch.tensor(redness(None, images)).view(2, 3) + 0.5
    best, worst = rewards.argmax(dim=1), rewards.argmin(dim=1)
    assert (best != worst).all()
    (step,) = steps
    grouped = latents.view(2, 3, 4, 16, 16)
    torch.testing.assert_close(step.latents[:2], grouped[torch.arange(2), best])  # chosen: the sampled latent itself
    torch.testing.assert_close(step.latents[2:], grouped[torch.arange(2), worst])
    logs = trainer.state.log_history[0]
    assert logs["online/chosen_reward"] == pytest.approx(rewards.max(dim=1).values.mean().item(), rel=1e-5)
    assert logs["online/rejected_reward"] == pytest.approx(rewards.min(dim=1).values.mean().item(), rel=1e-5)
    assert logs["online/rewards/constant"] == 1.0 and logs["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_reference_sampling_and_online_errors(pipelines, tmp_path):
    from trl_extras.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer

    prompts = Dataset.from_list([{"caption": "a square"}] * 2)
    trainer = DiffusionDPOTrainer(
        pipelines["flux"],
        args=_config(tmp_path, generate_with="reference"),
        train_dataset=prompts,
        reward_funcs=redness,
    )
    calls = {"policy": 0, "reference": 0}
    for name, module in [("policy", trainer.model), ("reference", trainer.ref_model)]:
        module.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    trainer.train()
    # sampling (2 denoising steps) ran the reference; the loss ran each once; the pipeline has its policy back
    assert calls == {"policy": 1, "reference": 3} and trainer.pipeline.transformer is trainer.model

    for kwargs, match in [
        ({"reward_weights": [1.0, 2.0]}, "reward_weights has 2 weights for 1 reward functions"),
        ({"loss_type": "sft"}, "loss_type='sft'"),
        ({"cache_latents": True}, "cache_latents=True has nothing to cache"),
    ]:
        with pytest.raises(ValueError, match=match):
            DiffusionDPOTrainer(
                pipelines["flux"], args=_config(tmp_path, **kwargs), train_dataset=prompts, reward_funcs=redness
            )
    with pytest.raises(ValueError, match="'prompt' or 'caption' column; this one has \\['text'\\]"):
        DiffusionDPOTrainer(pipelines["flux"], args=_config(tmp_path), train_dataset=Dataset.from_list([{"text": "a"}]),
                            reward_funcs=redness)  # fmt: skip
    with pytest.raises(TypeError, match="reward_funcs\\[0\\] must be a callable"):
        DiffusionDPOTrainer(pipelines["flux"], args=_config(tmp_path), train_dataset=prompts, reward_funcs="redness")
    with pytest.raises(ValueError, match="DiffusionDPOConfig.num_generations must be >= 2"):
        _config(tmp_path, num_generations=1)
