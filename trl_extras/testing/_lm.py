"""Tiny causal LMs, reward models and their tokenizer.

Example:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl_extras.testing import build_tiny_causal_lm

path = build_tiny_causal_lm("/tmp/tiny-lm")
model = AutoModelForCausalLM.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
```
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["CHAT_TEMPLATE", "build_tiny_causal_lm", "build_tiny_reward_model", "build_tiny_tokenizer"]

#: ChatML-style template, with a ``{% generation %}`` block so TRL's ``assistant_only_loss`` works too.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|im_end|>"
BOS_TOKEN = "<|im_start|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, BOS_TOKEN]

# A small, fixed corpus: the tokenizer only has to be deterministic and cover ASCII; merges make it a little shorter.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "This movie was great, wonderful, and fun. I loved it.",
    "This movie was terrible, boring, and bad. I hated it.",
    "user assistant system",
    "What is the capital of France? The capital of France is Paris.",
    string.ascii_letters + string.digits + string.punctuation,
] * 4


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def build_tiny_tokenizer(
    directory: str | os.PathLike | None = None, vocab_size: int = 320, corpus: Iterable[str] | None = None
):
    """Train a byte-level BPE tokenizer with pad/eos tokens and a ChatML chat template.

    ``corpus`` (default: a small built-in one) is the text the merges are learnt from: a tokenizer trained on a task's
    own text makes most of its words single tokens. Returns the tokenizer; when ``directory`` is given it is also
    saved there.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS if corpus is None else list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )
    if directory is not None:
        tokenizer.save_pretrained(directory)
    return tokenizer


def _llama_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=len(tokenizer),
        # 64 is the smallest width bitsandbytes' CPU 4-bit kernels accept (blocks of 64 inputs), so the QLoRA path
        # runs on these models too.
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def build_tiny_causal_lm(directory: str | os.PathLike, seed: int = 0, **config_overrides) -> str:
    """Build a tiny Llama-style causal LM and its tokenizer, save both to ``directory`` and return the path.

    ``config_overrides`` go to ``LlamaConfig`` (for example ``hidden_size=64`` for a slightly larger model).
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(directory)
    _seed(seed)
    model = LlamaForCausalLM(_llama_config(tokenizer, **config_overrides))
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id
    )
    model.save_pretrained(directory)
    return str(directory)


def build_tiny_reward_model(directory: str | os.PathLike, seed: int = 0, **config_overrides) -> str:
    """Build a tiny Llama-style sequence classifier with one label (a reward model), save it and its tokenizer."""
    from transformers import LlamaForSequenceClassification

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(directory)
    _seed(seed)
    model = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1, **config_overrides))
    model.save_pretrained(directory)
    return str(directory)
