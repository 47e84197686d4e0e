"""Tests for ``trl_extras.testing.build_tiny_vlm``: loading, processing, forward pass, determinism, stock DPO."""

import json
import pickle

import pytest
import torch
from PIL import Image

from trl_extras.testing import build_tiny_vlm
from trl_extras.testing._vlm import load_tiny_vlm_processor

FAMILIES = ["llava", "qwen2_vl"]
MODEL_CLASS = {"llava": "LlavaForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration"}


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, tmp_path_factory):
    family = request.param
    return family, build_tiny_vlm(tmp_path_factory.mktemp(f"vlm-{family}"), family=family)


def _conversation(with_answer=True):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    if with_answer:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "A red square."}]})
    return messages


def _image(size=(56, 56), color="red"):
    return Image.new("RGB", size, color)


def test_loads_back_with_from_pretrained(vlm):
    from transformers import AutoConfig, AutoModelForImageTextToText, ProcessorMixin

    family, path = vlm
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__ == MODEL_CLASS[family]
    assert AutoConfig.from_pretrained(path).model_type == family
    assert model.config.get_text_config().hidden_size == 32
    assert sum(p.numel() for p in model.parameters()) < 200_000  # tiny

    processor = load_tiny_vlm_processor(path)
    assert isinstance(processor, ProcessorMixin)
    assert type(processor.image_processor).__name__.endswith("Pil")  # PIL backend: no torchvision needed
    assert processor.tokenizer.pad_token == "<|pad|>" and processor.tokenizer.eos_token == "<|im_end|>"
    # The image token of the processor is the one the model replaces with image features
    image_token_id = model.config.image_token_id if family == "qwen2_vl" else model.config.image_token_index
    assert processor.image_token_id == image_token_id
    # The saved processor is a stock one, whatever class loaded it here
    with open(f"{path}/processor_config.json") as f:
        saved = json.load(f)
    assert saved["processor_class"] == {"llava": "LlavaProcessor", "qwen2_vl": "Qwen2VLProcessor"}[family]


def test_llava_loads_with_plain_auto_processor(tmp_path):
    from transformers import AutoProcessor, LlavaProcessor

    processor = AutoProcessor.from_pretrained(build_tiny_vlm(tmp_path, family="llava"))
    assert isinstance(processor, LlavaProcessor)


def test_chat_template_renders_image_parts_and_strings(vlm):
    family, path = vlm
    processor = load_tiny_vlm_processor(path)
    placeholder = {"llava": "<image>", "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>"}[family]
    text = processor.apply_chat_template(_conversation(), tokenize=False)
    assert text == (
        f"<|im_start|>user\n{placeholder}What is this?<|im_end|>\n<|im_start|>assistant\nA red square.<|im_end|>\n"
    )
    plain = processor.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert plain == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("size", [(56, 56), (40, 30)])
def test_processor_expands_one_image_into_image_tokens(vlm, size):
    family, path = vlm
    processor = load_tiny_vlm_processor(path)
    text = processor.apply_chat_template(_conversation(with_answer=False), tokenize=False, add_generation_prompt=True)
    batch = processor(images=[_image(size)], text=[text], return_tensors="pt")
    n_image_tokens = int((batch["input_ids"] == processor.image_token_id).sum())
    if family == "llava":
        assert batch["pixel_values"].shape == (1, 3, 28, 28)  # resized and centre-cropped
        assert n_image_tokens == 16  # (28 / 7) ** 2 patches, CLS dropped
    else:
        grid = batch["image_grid_thw"]
        assert grid.shape == (1, 3)
        if size == (56, 56):
            assert grid.tolist() == [[1, 4, 4]]
        assert n_image_tokens == int(grid.prod()) // 4  # 2x2 patch merge
        assert batch["pixel_values"].shape == (int(grid.prod()), 3 * 2 * 14 * 14)
        # the mm_token_type_ids mark exactly the image tokens
        assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == processor.image_token_id)
    # The image tokens are contiguous: the placeholder was expanded in place
    positions = (batch["input_ids"][0] == processor.image_token_id).nonzero().flatten()
    assert positions.tolist() == list(range(int(positions[0]), int(positions[0]) + n_image_tokens))


def test_forward_with_labels_gives_finite_loss_and_uses_the_image(vlm):
    from transformers import AutoModelForImageTextToText

    family, path = vlm
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = load_tiny_vlm_processor(path)
    text = processor.apply_chat_template(_conversation(), tokenize=False)
    batch = processor(images=[_image()], text=[text], return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == processor.image_token_id, -100)
    output = model(**batch, labels=labels)
    assert torch.isfinite(output.loss)
    assert 3.0 < output.loss.item() < 8.0  # about log(vocab) = log(~322) = 5.8 for random weights
    output.loss.backward()
    # Gradients reach the vision tower, so the image really feeds the language model
    vision_grads = [p.grad for n, p in model.named_parameters() if "vision" in n or "visual" in n]
    assert vision_grads and any(g is not None and g.abs().sum() > 0 for g in vision_grads)
    # A different image gives a different loss
    other = processor(images=[_image(color="blue")], text=[text], return_tensors="pt")
    with torch.no_grad():
        assert model(**other, labels=labels).loss.item() != pytest.approx(output.loss.item(), abs=1e-7)


def test_same_seed_same_weights_and_other_seed_other_weights(tmp_path):
    from safetensors.torch import load_file

    for family in FAMILIES:
        a = load_file(f"{build_tiny_vlm(tmp_path / f'{family}-a', seed=3, family=family)}/model.safetensors")
        b = load_file(f"{build_tiny_vlm(tmp_path / f'{family}-b', seed=3, family=family)}/model.safetensors")
        c = load_file(f"{build_tiny_vlm(tmp_path / f'{family}-c', seed=4, family=family)}/model.safetensors")
        assert a.keys() == b.keys() == c.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)
        for name in ("tokenizer.json", "processor_config.json", "config.json"):
            with open(tmp_path / f"{family}-a" / name) as fa, open(tmp_path / f"{family}-b" / name) as fb:
                assert fa.read() == fb.read()


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="`family` must be one of"):
        build_tiny_vlm(tmp_path, family="idefics")


def test_qwen2_vl_processor_round_trips_and_pickles(tmp_path):
    path = build_tiny_vlm(tmp_path / "src", family="qwen2_vl")
    processor = load_tiny_vlm_processor(path)
    processor.save_pretrained(tmp_path / "copy")  # what Trainer.save_model does with the processing class
    with open(tmp_path / "copy" / "processor_config.json") as f:
        saved = json.load(f)
    assert saved["processor_class"] == "Qwen2VLProcessor"
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    reloaded = load_tiny_vlm_processor(tmp_path / "copy")
    text = processor.apply_chat_template(_conversation(), tokenize=False)
    a = processor(images=[_image()], text=[text], return_tensors="pt")
    b = pickle.loads(pickle.dumps(reloaded))(images=[_image()], text=[text], return_tensors="pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stock_dpo_trainer_trains_two_steps(vlm, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText
    from trl import DPOConfig, DPOTrainer

    family, path = vlm
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = load_tiny_vlm_processor(path)
    colors = ["red", "blue", "green", "white"]
    dataset = Dataset.from_dict(
        {
            "images": [[_image((32, 32), c)] for c in colors],
            "prompt": [[{"role": "user", "content": "What colour is this?"}] for _ in colors],
            "chosen": [[{"role": "assistant", "content": c}] for c in colors],
            "rejected": [[{"role": "assistant", "content": "A dog."}] for _ in colors],
        }
    )
    args = DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        bf16=False,
        report_to="none",
        save_strategy="no",
        max_length=None,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])]
    assert any("vision" in n or "visual" in n for n in changed)
    assert any("language_model" in n for n in changed)
