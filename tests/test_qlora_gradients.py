"""QLoRA gradients equal those of a float32 twin (same base weights dequantized, same LoRA weights), also after an
eval-mode pass: bitsandbytes' CPU inference repack must never reach a model our QLoRA switch loaded.

``force_cpu_repack`` makes every new ``Linear4bit`` believe the CPU has AVX512-BF16 (bitsandbytes decides it per layer
in ``Linear4bit.__init__``), so the repack path, and these tests, behave the same on any CPU.
"""

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from transformers import AutoModelForCausalLM  # noqa: E402

from trl_extras.quantization import (  # noqa: E402
    QLoRAConfig,
    cpu_repacked_layers,
    disable_cpu_inference_repack,
    load_qlora_model,
)

CPU_QLORA = QLoRAConfig(bnb_4bit_compute_dtype="float32", lora_r=4, lora_alpha=8, lora_dropout=0.0)
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]])


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    """A tiny Llama without biases, one with a bias on every linear (as Qwen2, GPT-2 and OPT have), a tiny Llava."""
    from trl_extras.testing import build_tiny_causal_lm, build_tiny_vlm

    return {
        "plain": build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm")),
        "biased": build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm-bias"), attention_bias=True, mlp_bias=True),
        "vlm": build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"), family="llava"),
    }


@pytest.fixture
def force_cpu_repack(monkeypatch):
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)


def float_twin(model, path, model_class=AutoModelForCausalLM):
    """A float32 copy of the PEFT model ``model``: every 4-bit base weight dequantized, every other weight copied."""
    from peft import get_peft_model

    base = model_class.from_pretrained(path, dtype=torch.float32, num_labels=model.config.num_labels)
    twin = get_peft_model(base, model.peft_config["default"])
    with torch.no_grad():
        for name, param in twin.named_parameters():
            source = model.get_parameter(name)
            if isinstance(source, bnb.nn.Params4bit):
                assert not getattr(source.quant_state, "packing_format_for_cpu", False), name
                source = bnb.functional.dequantize_4bit(source.data, source.quant_state)
            param.copy_(source.to(torch.float32))
    return twin


def lora_gradients(model, inputs=None):
    """Gradients of a fixed loss of the logits, taken in train mode, of every trainable weight."""
    model.train()
    model.zero_grad()
    logits = model(**(inputs or {"input_ids": IDS})).logits
    (logits.float().square().mean() + logits.float()[..., 0].sum()).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


def relative_errors(grads, reference):
    assert grads.keys() == reference.keys()
    return {name: ((grads[name] - ref).norm() / ref.norm()).item() for name, ref in reference.items()}


def assert_gradients_match_twin(model, path, model_class=AutoModelForCausalLM, inputs=None, rtol=1e-5):
    assert not cpu_repacked_layers(model)
    reference = lora_gradients(float_twin(model, path, model_class), inputs)
    assert all(ref.norm() > 0 for ref in reference.values()), "a trainable weight has no gradient: weak check"
    errors = relative_errors(lora_gradients(model, inputs), reference)
    worst = max(errors, key=errors.get)
    assert errors[worst] < rtol, f"{worst}: relative gradient error {errors[worst]:.2e} against the float32 twin"


def nonzero_adapter(model):
    """lora_B starts at zero (then lora_A has no gradient); give it small values so every LoRA weight is checked."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


@pytest.mark.parametrize("kind", ["plain", "biased"])
def test_lora_gradients_equal_the_float_twin_after_an_eval_pass(tiny_paths, force_cpu_repack, kind):
    model = nonzero_adapter(load_qlora_model(tiny_paths[kind], CPU_QLORA))
    assert_gradients_match_twin(model, tiny_paths[kind])
    model.eval()
    with torch.no_grad():
        model(input_ids=IDS)  # an evaluation pass: bitsandbytes would repack here
        model.generate(input_ids=IDS[:1], max_new_tokens=2, do_sample=False)
    assert cpu_repacked_layers(model) == []
    assert_gradients_match_twin(model, tiny_paths[kind])


def test_every_4bit_layer_has_the_repack_switch_off(tiny_paths, force_cpu_repack):
    model = load_qlora_model(tiny_paths["plain"], CPU_QLORA)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14
    assert all(m.support_avx512bf16_for_cpu is False for m in layers)


def test_a_layer_repacked_before_the_switch_is_an_error(tiny_paths, force_cpu_repack):
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_paths["plain"], quantization_config=quantization)
    model.eval()
    if bnb.functional.has_avx512bf16():  # the real detection: an eval pass repacks, for the kernel this CPU has
        with torch.no_grad():
            model(input_ids=IDS)
    else:  # no kernel for the packed layout here: repack the way Linear4bit.forward would, without running it
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = module.weight
                weight.data, weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
                    weight.data, weight.quant_state
                )
    assert len(cpu_repacked_layers(model)) == 14  # what bitsandbytes does without the switch
    with pytest.raises(ValueError, match=r"14 4-bit layer\(s\) \(first: 'model.layers.0.self_attn.q_proj'\)"):
        disable_cpu_inference_repack(model)


def test_a_bitsandbytes_without_the_switch_is_an_error(tiny_paths, monkeypatch):
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_paths["plain"], quantization_config=quantization)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            del module.support_avx512bf16_for_cpu
    with pytest.raises(RuntimeError, match="'model.layers.0.self_attn.q_proj' has no `support_avx512bf16_for_cpu`"):
        disable_cpu_inference_repack(model)
    monkeypatch.delattr(bnb.functional, "_convert_weight_packed_for_cpu")  # a bitsandbytes that never repacks
    assert disable_cpu_inference_repack(model) == 0


# ---------------------------------------------------------------------------------------------------------------------
# in every trainer: train two steps with an evaluation after each (ReMax's greedy pass runs in eval mode every step),
# then the model the trainer leaves must still train like its float32 twin, with a float32 adapter


def _even_tokens(completion_ids, **kwargs):
    return [sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1) for ids in completion_ids]


def _pairs():
    from datasets import Dataset

    rows = [{"prompt": "The movie was", "chosen": " great.", "rejected": " bad."}] * 4
    return Dataset.from_list(rows)


def _prompts():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p} for p in ["The movie was", "I think", "Today the", "It is"]])


def _image_pairs():
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(4)
    ]
    return Dataset.from_dict(
        {
            "images": [[image] for image in images],
            "prompt": [[{"role": "user", "content": "What is in the picture?"}]] * 4,
            "chosen": [[{"role": "assistant", "content": "A red square."}]] * 4,
            "rejected": [[{"role": "assistant", "content": "A dog."}]] * 4,
        }
    )


def _texts():
    from datasets import Dataset

    return Dataset.from_list([{"text": "The movie was great, I loved it."}] * 4)


_COMMON = dict(
    max_steps=2,
    learning_rate=1e-2,
    bf16=False,
    report_to="none",
    save_strategy="no",
    disable_tqdm=True,
    eval_strategy="steps",
    eval_steps=1,
    seed=0,
)
_ONLINE = dict(max_completion_length=4, per_device_train_batch_size=4, per_device_eval_batch_size=4)


def _case(name):
    """``(trainer class, config, trainer kwargs, datasets, model class, stock)`` for each trainer that takes QLoRA."""
    import trl
    from transformers import AutoModelForImageTextToText, AutoModelForSequenceClassification

    import trl_extras

    offline = dict(per_device_train_batch_size=2, per_device_eval_batch_size=2)
    cases = {
        "unlikelihood": (trl_extras.UnlikelihoodTrainer, trl_extras.UnlikelihoodConfig, offline, {}, _pairs),
        "mdpo": (trl_extras.MDPOTrainer, trl_extras.MDPOConfig, {**offline, "max_length": None}, {}, _image_pairs),
        "dpo": (trl.DPOTrainer, trl.DPOConfig, offline, {}, _pairs),
        "sft": (trl.SFTTrainer, trl.SFTConfig, offline, {}, _texts),
        "reward": (trl.RewardTrainer, trl.RewardConfig, offline, {}, _pairs),
        "remax": (trl_extras.ReMaxTrainer, trl_extras.ReMaxConfig, _ONLINE, {"reward_funcs": _even_tokens}, _prompts),
        "grpo": (
            trl.GRPOTrainer,
            trl.GRPOConfig,
            {**_ONLINE, "num_generations": 2, "num_generations_eval": 2},
            {"reward_funcs": _even_tokens},
            _prompts,
        ),
        "rloo": (
            trl.RLOOTrainer,
            trl.RLOOConfig,
            {**_ONLINE, "num_generations": 2, "num_generations_eval": 2},
            {"reward_funcs": _even_tokens},
            _prompts,
        ),
        "ppo": (
            trl_extras.PPOTrainer,
            trl_extras.PPOConfig,
            {**_ONLINE, "num_ppo_epochs": 1, "num_mini_batches": 1},
            {"reward_funcs": _even_tokens},
            _prompts,
        ),
    }
    trainer_class, config_class, config_kwargs, trainer_kwargs, data = cases[name]
    model_class = {"reward": AutoModelForSequenceClassification, "mdpo": AutoModelForImageTextToText}.get(
        name, AutoModelForCausalLM
    )
    return trainer_class, config_class, config_kwargs, trainer_kwargs, data, model_class


TRAINERS = ["unlikelihood", "remax", "ppo", "mdpo", "dpo", "grpo", "rloo", "reward", "sft"]
STOCK = {"dpo", "grpo", "rloo", "reward", "sft"}


@pytest.mark.parametrize("name", TRAINERS)
def test_qlora_trains_like_its_float_twin_in_every_trainer(name, tiny_paths, force_cpu_repack, tmp_path):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from trl_extras.scripts._common import train_and_save
    from trl_extras.testing import load_tiny_vlm_processor

    trainer_class, config_class, config_kwargs, trainer_kwargs, data, model_class = _case(name)
    path = tiny_paths["vlm"] if name == "mdpo" else tiny_paths["biased"]  # the VLM's CLIP linears have biases
    qlora = CPU_QLORA
    if name == "reward":
        qlora = QLoRAConfig(**{**CPU_QLORA.to_dict(), "task_type": "SEQ_CLS", "lora_modules_to_save": ["score"]})
    model = load_qlora_model(path, qlora, model_class=model_class, **({"num_labels": 1} if name == "reward" else {}))
    tokenizer = load_tiny_vlm_processor(path) if name == "mdpo" else AutoTokenizer.from_pretrained(path)
    if name == "reward":
        model.config.pad_token_id = tokenizer.pad_token_id
    if name == "ppo":
        trainer_kwargs = {**trainer_kwargs, "value_model": path}
    args = config_class(output_dir=str(tmp_path), **_COMMON, **config_kwargs)
    trainer = trainer_class(
        model=model, args=args, train_dataset=data(), eval_dataset=data(), processing_class=tokenizer, **trainer_kwargs
    )
    if name in STOCK:  # as the CLI runs them: its train_and_save restores the adapter's dtype before training
        train_and_save(trainer, SimpleNamespace(dataset_name="local.jsonl", eval_samples=0), args, role="policy")
    else:
        trainer.train()
    evaluations = [log for log in trainer.state.log_history if any(key.startswith("eval_") for key in log)]
    assert len(evaluations) == 2, f"{name}: expected an evaluation after each of the 2 steps"
    trainable = {n: p.dtype for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert set(trainable.values()) == {torch.float32}, f"{name}: adapter dtypes {set(trainable.values())}"
    inputs = None
    if name == "mdpo":  # an image and text, so that the vision tower's adapters get gradients too
        image = _image_pairs()[0]["images"][0]
        inputs = dict(tokenizer(text=["<image> What is in the picture?"], images=[image], return_tensors="pt"))
    assert_gradients_match_twin(nonzero_adapter(trainer.model), path, model_class, inputs)


@pytest.mark.parametrize("name", ["remax", "unlikelihood"])
def test_a_4bit_model_trl_loads_from_a_path_is_covered_too(name, tiny_paths, force_cpu_repack, tmp_path):
    """Our trainers given a path and a ``quantization_config`` (TRL loads the 4-bit model, not our switch)."""
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig

    trainer_class, config_class, config_kwargs, trainer_kwargs, data, _ = _case(name)
    path = tiny_paths["biased"]
    args = config_class(output_dir=str(tmp_path), **_COMMON, **config_kwargs)
    trainer = trainer_class(
        model=path,
        args=args,
        train_dataset=data(),
        eval_dataset=data(),
        processing_class=AutoTokenizer.from_pretrained(path),
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
        peft_config=LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
        **trainer_kwargs,
    )
    layers = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and not any(m.support_avx512bf16_for_cpu for m in layers)
    trainer.train()
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}
    assert_gradients_match_twin(nonzero_adapter(trainer.model), path)
