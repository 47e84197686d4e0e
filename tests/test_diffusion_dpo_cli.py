"""`trl-extras diffusion-dpo` picks the model family from the pipeline; the per-family configs parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trl_extras import cli

REPO = Path(__file__).resolve().parents[1]
FAMILY_CONFIGS = sorted((REPO / "configs" / "diffusion_dpo").glob("*.yaml"))


@pytest.mark.parametrize("config", FAMILY_CONFIGS, ids=lambda path: path.stem)
def test_family_configs_parse_and_start_with_their_command(config):
    from trl_extras.scripts.diffusion_dpo import make_parser

    lines = config.read_text().splitlines()
    assert lines[0] == f"# trl-extras diffusion-dpo --config configs/diffusion_dpo/{config.name}"
    script_args, training_args, model_args, _ = make_parser().parse_args_and_config(
        ["--config", str(config), "--bf16", "false"]  # the configs are for GPUs
    )
    values = yaml.safe_load(config.read_text())
    assert model_args.model_name_or_path == values["model_name_or_path"] and model_args.use_peft
    assert training_args.resolution == values["resolution"] and training_args.weighting_scheme == "logit_normal"
    assert script_args.dataset_name == "yuvalkirstain/pickapic_v2"
    assert len(FAMILY_CONFIGS) == 3


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    from trl_extras.testing import build_tiny_sd3_pipeline

    return build_tiny_sd3_pipeline(tmp_path_factory.mktemp("cli-sd3"))


COMMON = ["--dataset_name", "builtin:shapes", "--max_steps", "2", "--logging_steps", "1", "--eval_samples", "4",
          "--disable_tqdm", "true", "--resolution", "32", "--max_sequence_length", "16", "--report_to", "none",
          "--per_device_train_batch_size", "2", "--bf16", "false"]  # fmt: skip


def test_cli_trains_an_sd3_pipeline_offline_and_online(tiny_sd3, builtin_cache, tmp_path, capsys, monkeypatch):
    status = cli.main(
        ["diffusion-dpo", "--model_name_or_path", tiny_sd3, "--output_dir", str(tmp_path / "a"), *COMMON]
    )
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    assert "Diffusion-DPO on a StableDiffusion3Pipeline: family 'sd3', dataset pairs, full fine-tuning" in out
    assert "before training:" in out and (tmp_path / "a" / "transformer").is_dir()

    (tmp_path / "image_rewards.py").write_text(
        "import numpy as np\n"
        "def redness(prompts, completions, **kwargs):\n"
        "    return [float(np.asarray(im, dtype=np.float32)[..., 0].mean()) / 255 for im in completions]\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["diffusion-dpo", "--model_name_or_path", tiny_sd3, "--output_dir", str(tmp_path / "b"), *COMMON,
            "--reward_funcs", "image_rewards:redness", "--use_peft", "true", "--num_generations", "2",
            "--generation_num_inference_steps", "2"]  # fmt: skip
    status = cli.main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    assert "family 'sd3', online pairs, LoRA (reference: adapter disabled)" in out
    assert "online/chosen_reward" in out + err and (tmp_path / "b" / "pytorch_lora_weights.safetensors").is_file()
