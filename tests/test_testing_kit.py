import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trl_extras.testing import build_tiny_causal_lm, build_tiny_tokenizer


def test_tokenizer_has_special_tokens_and_round_trips():
    tokenizer = build_tiny_tokenizer()
    assert tokenizer.pad_token is not None and tokenizer.eos_token is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    text = "This movie was great! 42 times."
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_chat_template_renders_roles_and_generation_prompt():
    tokenizer = build_tiny_tokenizer()
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_causal_lm_loads_through_from_pretrained_and_generates(tiny_lm_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_path)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 200_000
    inputs = tokenizer("The movie", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, inputs.input_ids.shape[1] + 4) or out[0, -1] == tokenizer.eos_token_id


def test_builders_are_deterministic(tmp_path):
    a = AutoModelForCausalLM.from_pretrained(build_tiny_causal_lm(tmp_path / "a", seed=3))
    b = AutoModelForCausalLM.from_pretrained(build_tiny_causal_lm(tmp_path / "b", seed=3))
    c = AutoModelForCausalLM.from_pretrained(build_tiny_causal_lm(tmp_path / "c", seed=4))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_reward_model_has_one_label(tiny_reward_model_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model_path)
    logits = model(**tokenizer(["good", "bad movie"], return_tensors="pt", padding=True)).logits
    assert logits.shape == (2, 1)
    assert model.config.pad_token_id == tokenizer.pad_token_id
