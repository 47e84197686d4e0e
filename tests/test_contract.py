"""The contract every trainer keeps (peft's ``TEST_CASES`` style): one table of trainers, each check parametrized over
it. Ours and TRL's stock ones as the CLI runs them (``trl_extras.checkpointing.checkpoint_safe``), on tiny models,
2 steps, CPU, exact where the maths is.

Checks: same seed = same run; resume from the step-1 checkpoint = the uninterrupted run, exactly; save/reload exact
(full, LoRA); gradient accumulation (2 x 2 rows) = one batch of 4 under SGD, to 1e-6 relative on the update; the model
card carries the trainer's tags and paper. A row lists the checks it is in (``checks``); rows left out of a check say
why in ``CASES``' comments. Further rows (QLoRA, 2 gloo processes = 1) plug in as more ``Case``\\ s or ``CHECKS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trl_extras.checkpointing import checkpoint_safe

PAIRS = [
    {"prompt": "The movie was", "chosen": " great", "rejected": " bad"},
    {"prompt": "I thought the film was", "chosen": " wonderful", "rejected": " terrible"},
    {"prompt": "The acting was", "chosen": " superb", "rejected": " awful"},
    {"prompt": "Overall the story was", "chosen": " lovely", "rejected": " boring"},
]
PROMPTS = ["The movie was", "I think that", "What is the", "Hello there"]
ALL_CHECKS = {"seed", "resume", "reload", "lora", "grad_accum", "card"}


def even_tokens(completion_ids, **kwargs):
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def common(output_dir, **overrides):
    """Config fields every row shares (4 rows a step, 2 steps, a checkpoint every step, seed 0, CPU float32)."""
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "save_strategy": "steps",
        "save_steps": 1,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "report_to": "none",
        "bf16": False,
        "disable_tqdm": True,
        "seed": 0,
        **overrides,
    }


def lm_lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


# ---------------------------------------------------------------------------------------------------------------------
# builders: (models, output_dir, peft_config, **config overrides) -> trainer; batch of 4 rows by default


def build_preference(trainer_class, config_class, **defaults):
    def build(models, output_dir, peft_config=None, **overrides):
        args = config_class(**common(output_dir, **{**defaults, **overrides}))
        return checkpoint_safe(trainer_class)(
            model=AutoModelForCausalLM.from_pretrained(models["lm"]),
            args=args,
            train_dataset=Dataset.from_list(PAIRS),
            processing_class=AutoTokenizer.from_pretrained(models["lm"]),
            peft_config=peft_config,
        )

    return build


def build_online(trainer_class, config_class, **defaults):
    def build(models, output_dir, peft_config=None, **overrides):
        config = {"max_completion_length": 4, **defaults, **overrides}
        return checkpoint_safe(trainer_class)(
            model=AutoModelForCausalLM.from_pretrained(models["lm"]),
            reward_funcs=even_tokens,
            args=config_class(**common(output_dir, gradient_checkpointing=False, **config)),
            train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS * 2]),
            processing_class=AutoTokenizer.from_pretrained(models["lm"]),
            peft_config=peft_config,
        )

    return build


def build_ppo(models, output_dir, peft_config=None, **overrides):
    from trl_extras import PPOConfig, PPOTrainer

    config = {"max_completion_length": 4, "num_ppo_epochs": 1, **overrides}
    return PPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(models["lm"]),
        reward_funcs=even_tokens,
        args=PPOConfig(**common(output_dir, **config)),
        train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS * 2]),
        processing_class=AutoTokenizer.from_pretrained(models["lm"]),
        peft_config=peft_config,
    )


def build_reward(models, output_dir, peft_config=None, **overrides):
    rows = [{"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]} for p in PAIRS]
    return checkpoint_safe(trl.RewardTrainer)(
        model=AutoModelForSequenceClassification.from_pretrained(models["rm"], num_labels=1),
        args=trl.RewardConfig(**common(output_dir, **overrides)),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(models["rm"]),
        peft_config=peft_config,
    )


def build_sft(models, output_dir, peft_config=None, **overrides):
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]
    return checkpoint_safe(trl.SFTTrainer)(
        model=AutoModelForCausalLM.from_pretrained(models["lm"]),
        args=trl.SFTConfig(**common(output_dir, **overrides)),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(models["lm"]),
        peft_config=peft_config,
    )


def build_mdpo(models, output_dir, peft_config=None, **overrides):
    import test_mdpo
    from transformers import AutoModelForImageTextToText

    from trl_extras import MDPOConfig, MDPOTrainer
    from trl_extras.testing._vlm import load_tiny_vlm_processor

    args = MDPOConfig(**common(output_dir, max_length=None, **overrides))
    return MDPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(models["vlm"]),
        args=args,
        train_dataset=test_mdpo.vision_dataset(),
        processing_class=load_tiny_vlm_processor(models["vlm"]),
        peft_config=peft_config,
    )


def build_diffusion_dpo(models, output_dir, peft_config=None, **overrides):
    import test_diffusion_dpo

    from trl_extras import DiffusionDPOConfig, DiffusionDPOTrainer

    config = common(output_dir, **{"learning_rate": 1e-4, **overrides})
    output_dir = config.pop("output_dir")
    args = DiffusionDPOConfig(output_dir, dataloader_pin_memory=False, gradient_checkpointing=False, **config)
    return DiffusionDPOTrainer(models["diffusion"], args=args, train_dataset=test_diffusion_dpo._pairs())


def build_flow_diffusion_dpo(family):
    """Diffusion-DPO on a flow-matching family (``"sd3"``, ``"flux"``, ``"sana"``): the UNet row's builder on that
    family's tiny pipeline, with the families test's pairs and T5/Gemma length."""

    def build(models, output_dir, peft_config=None, **overrides):
        import test_diffusion_dpo_families

        from trl_extras import DiffusionDPOConfig, DiffusionDPOTrainer

        config = common(
            output_dir, **{"learning_rate": 1e-4, "resolution": 32, "max_sequence_length": 16, **overrides}
        )
        output_dir = config.pop("output_dir")
        args = DiffusionDPOConfig(output_dir, dataloader_pin_memory=False, gradient_checkpointing=False, **config)
        return DiffusionDPOTrainer(models[family], args=args, train_dataset=test_diffusion_dpo_families._pairs(4))

    return build


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable
    checks: frozenset = frozenset(ALL_CHECKS)

    def __repr__(self):
        return self.name


def _cases():
    from trl_extras import ReMaxConfig, ReMaxTrainer, UnlikelihoodConfig, UnlikelihoodTrainer

    return [
        Case("unlikelihood", build_preference(UnlikelihoodTrainer, UnlikelihoodConfig)),
        Case("dpo", build_preference(trl.DPOTrainer, trl.DPOConfig)),
        Case("remax", build_online(ReMaxTrainer, ReMaxConfig, num_generations=1)),
        Case("grpo", build_online(trl.GRPOTrainer, trl.GRPOConfig, num_generations=2)),
        Case("rloo", build_online(trl.RLOOTrainer, trl.RLOOConfig, num_generations=2)),
        Case("ppo", build_ppo),
        Case("reward", build_reward),
        Case("sft", build_sft),
        Case("mdpo", build_mdpo),
        # Diffusion-DPO: full fine-tuning rows; its LoRA save/reload is tested in test_diffusion_dpo.py (diffusers
        # format). Gradient accumulation: each micro-batch draws latents, noise and timesteps in turn, so 2 x 2 rows
        # get other samples than 4 rows (0.73 of the update apart); test_gradient_accumulation_diffusion_dpo fixes
        # the draws and checks the accumulation itself.
        Case("diffusion_dpo", build_diffusion_dpo, frozenset({"seed", "resume", "reload", "card"})),
        # the flow-matching families, full fine-tuning as the UNet row (their LoRA save/reload in diffusers' format:
        # test_diffusion_dpo_families.py; the card is the trainer's, checked once above)
        *(
            Case(f"diffusion_dpo_{family}", build_flow_diffusion_dpo(family), frozenset({"seed", "resume", "reload"}))
            for family in ("sd3", "flux", "sana")
        ),
    ]


CASES = _cases()


def cases_for(check):
    return [pytest.param(case, id=case.name) for case in CASES if check in case.checks]


# ---------------------------------------------------------------------------------------------------------------------
# shared tiny models and the uninterrupted run of each row


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_lm_path, tiny_reward_model_path):
    """Paths of the tiny models, built on first use."""
    from trl_extras.testing import (
        build_tiny_diffusion_pipeline,
        build_tiny_flux_pipeline,
        build_tiny_sana_pipeline,
        build_tiny_sd3_pipeline,
        build_tiny_vlm,
    )

    built = {"lm": tiny_lm_path, "rm": tiny_reward_model_path}
    builders = {
        "vlm": lambda: build_tiny_vlm(tmp_path_factory.mktemp("vlm"), family="llava"),
        "diffusion": lambda: build_tiny_diffusion_pipeline(tmp_path_factory.mktemp("sd")),
        "sd3": lambda: build_tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3")),
        "flux": lambda: build_tiny_flux_pipeline(tmp_path_factory.mktemp("flux")),
        "sana": lambda: build_tiny_sana_pipeline(tmp_path_factory.mktemp("sana")),
    }

    class Models(dict):
        def __missing__(self, key):
            self[key] = builders[key]()
            return self[key]

    return Models(built)


def params(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def max_abs_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def straight(models, tmp_path_factory):
    """``straight[case]``: the uninterrupted 2-step run of a row, ``(output_dir, trainer, final parameters)``; the
    trainer's ``initial_params`` are its parameters before training."""

    class Runs(dict):
        def __missing__(self, case):
            output_dir = tmp_path_factory.mktemp(case.name)
            trainer = case.build(models, output_dir)
            trainer.initial_params = params(trainer)
            trainer.train()
            self[case] = (Path(output_dir), trainer, params(trainer))
            return self[case]

    return Runs()


# ---------------------------------------------------------------------------------------------------------------------
# the checks


@pytest.mark.parametrize("case", cases_for("seed"))
def test_same_seed_same_run(case, models, straight, tmp_path):
    _, _, expected = straight[case]
    again = case.build(models, tmp_path, save_strategy="no")
    again.train()
    assert max_abs_diff(params(again), expected) == 0.0


@pytest.mark.parametrize("case", cases_for("resume"))
def test_resume_from_a_save_step_equals_the_uninterrupted_run(case, models, straight, tmp_path):
    output_dir, trainer, expected = straight[case]
    assert trainer.state.global_step == 2
    resumed = case.build(models, tmp_path)
    resumed.train(resume_from_checkpoint=str(output_dir / "checkpoint-1"))
    assert resumed.state.global_step == 2
    assert max_abs_diff(params(resumed), expected) == 0.0
    assert max_abs_diff(trainer.initial_params, expected) > 0  # and the run did move the parameters


def _reloaded(case, trainer, directory):
    if case.name.startswith("diffusion_dpo"):  # the saved pipeline's denoiser: unet/ or transformer/
        denoiser = trainer.accelerator.unwrap_model(trainer.model)
        subfolder = Path(directory) / trainer.family.denoiser_name
        return dict(type(denoiser).from_pretrained(subfolder).named_parameters())
    model_class = type(trainer.accelerator.unwrap_model(trainer.model))
    return dict(model_class.from_pretrained(directory).named_parameters())


@pytest.mark.parametrize("case", cases_for("reload"))
def test_save_and_reload_is_exact(case, straight, tmp_path):
    _, trainer, expected = straight[case]
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = _reloaded(case, trainer, tmp_path / "saved")
    assert max_abs_diff({name: reloaded[name] for name in expected}, expected) == 0.0


@pytest.mark.parametrize("case", cases_for("lora"))
def test_lora_save_and_reload_is_exact(case, models, tmp_path):
    from peft import LoraConfig, PeftModel

    peft_config = lm_lora()
    if case.name == "reward":
        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS")
    trainer = case.build(models, tmp_path / "run", peft_config=peft_config, max_steps=1, save_strategy="no")
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = type(model.get_base_model()).from_pretrained(models[{"reward": "rm", "mdpo": "vlm"}.get(case.name, "lm")])
    reloaded = PeftModel.from_pretrained(base, tmp_path / "saved")
    trained = {name: p.detach() for name, p in model.named_parameters() if "lora_" in name}
    assert trained and max_abs_diff({n: p for n, p in reloaded.named_parameters() if "lora_" in n}, trained) == 0.0


@pytest.mark.parametrize("case", cases_for("grad_accum"))
def test_gradient_accumulation_equals_the_full_batch(case, models, tmp_path):
    assert_accumulation_matches_the_full_batch(case, models, tmp_path)


def assert_accumulation_matches_the_full_batch(case, models, tmp_path, rtol=1e-6):
    """One SGD step on 4 rows, as one batch and as 2 micro-batches of 2: the same update, to ``rtol`` relative."""
    sgd = {"max_steps": 1, "save_strategy": "no", "optim": "sgd", "learning_rate": 1.0, "max_grad_norm": 0.0}
    full = case.build(models, tmp_path / "full", per_device_train_batch_size=4, **sgd)
    initial = params(full)
    full.train()
    accumulated = case.build(
        models, tmp_path / "accum", per_device_train_batch_size=2, gradient_accumulation_steps=2, **sgd
    )
    accumulated.train()
    full_update = {name: p - initial[name] for name, p in params(full).items()}
    accum_update = {name: p - initial[name] for name, p in params(accumulated).items()}
    scale = max(update.abs().max().item() for update in full_update.values())
    assert scale > 0
    assert max_abs_diff(accum_update, full_update) / scale < rtol


@pytest.mark.parametrize("case", cases_for("card"))
def test_model_card_carries_the_trainers_tags_and_paper(case, straight):
    output_dir, trainer, _ = straight[case]
    card = (output_dir / "README.md").read_text()
    header = card.split("---")[1]
    for tag in type(trainer)._tag_names:
        assert f"- {tag}\n" in header, f"{case.name}: tag {tag!r} not in the model card's tags"
    paper = getattr(type(trainer), "_paper", None) or {}
    if paper:
        assert paper["id"] in card and paper["title"] in card, f"{case.name}: paper {paper['id']} not in the card"


def test_gradient_accumulation_diffusion_dpo_with_the_draws_fixed(models, tmp_path, monkeypatch):
    """Diffusion-DPO's random draws depend on the micro-batch split; with each row's latent, noise and timestep a
    function of the row, 2 x 2 rows = 4 rows to 1e-5 relative (measured 4.8e-6: float32 sums in the UNet's
    convolution and group-norm backward over 2 vs 4 rows; the language models' rows measure 1e-7 to 3e-7)."""
    from trl_extras import DiffusionDPOTrainer
    from trl_extras.trainer.diffusion.base import DiffusionFamily

    def sample_latents(self, latent_dist, generator):  # on the family adapter
        mean = latent_dist.float().chunk(2, dim=1)[0]  # the posterior mean instead of a sample
        return mean * self.pipeline.vae.config.scaling_factor

    def draw(self, sample, shape, generator):
        if len(shape) == 1:  # timesteps
            return torch.full(shape, 500, dtype=torch.long)
        return torch.cos(7 * self._fixed_latents[: shape[0]])  # noise: a function of the row's chosen latent

    original_compute_loss = DiffusionDPOTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        if "prompt_embeds" not in inputs:
            inputs = self.encode_batch(inputs)
        self._fixed_latents = self.family.sample_latents(inputs["chosen_latent_dist"], None)
        return original_compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DiffusionFamily, "sample_latents", sample_latents)
    monkeypatch.setattr(DiffusionDPOTrainer, "_draw", draw)
    monkeypatch.setattr(DiffusionDPOTrainer, "compute_loss", compute_loss)
    diffusion = next(case for case in CASES if case.name == "diffusion_dpo")
    assert_accumulation_matches_the_full_batch(diffusion, models, tmp_path, rtol=1e-5)
