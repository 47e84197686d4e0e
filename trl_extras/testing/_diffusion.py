"""Tiny text-to-image pipelines (Stable Diffusion 1.x, SDXL, Stable Diffusion 3, Flux, Sana), built offline.

Example:

```python
from diffusers import DiffusionPipeline
from trl_extras.testing import build_tiny_diffusion_pipeline

path = build_tiny_diffusion_pipeline("/tmp/tiny-sd")
pipe = DiffusionPipeline.from_pretrained(path)  # a StableDiffusionPipeline
image = pipe("a red square", num_inference_steps=2, output_type="pil").images[0]  # 32 x 32
```

The components are the real diffusers/transformers classes at toy sizes: ``UNet2DConditionModel`` (block widths 16/32,
one cross-attention block), ``AutoencoderKL`` (2 blocks: 32 px images <-> 4 x 16 x 16 latents), ``CLIPTextModel``
(hidden size 32, 2 layers) with a ``CLIPTokenizer`` whose byte-level BPE vocabulary is made here (no hub download) and
a ``DDPMScheduler``. With ``sdxl=True`` the pipeline is a ``StableDiffusionXLPipeline``: a second tokenizer and a
``CLIPTextModelWithProjection`` (pooled embeddings), penultimate hidden states of both encoders concatenated as the
cross-attention input, and a UNet with ``addition_embed_type="text_time"`` (size and crop micro-conditioning).

``build_tiny_sd3_pipeline`` and ``build_tiny_flux_pipeline`` build the flow-matching diffusion transformers the same
way: ``SD3Transformer2DModel`` with two ``CLIPTextModelWithProjection`` encoders and a ``T5EncoderModel``, or
``FluxTransformer2DModel`` (packed 2 x 2 latent patches, optional guidance embedding) with a ``CLIPTextModel`` and a
``T5EncoderModel``; both with a ``FlowMatchEulerDiscreteScheduler`` and a T5 tokenizer whose unigram vocabulary is made
here. ``build_tiny_sana_pipeline``: ``SanaTransformer2DModel`` with a ``Gemma2Model`` text encoder (a BPE
``GemmaTokenizer`` made here) and a deterministic ``AutoencoderDC`` (DC-AE).

The SD, SD3 and Flux builders take ``vae="linear"`` for an ``AutoencoderKL`` whose weights are set (not learnt) so
that it is linear: colours round-trip and a decoded image's colour follows its latent (`_linear_vae`). The default
random VAE decodes almost any latent to the same colour, so a reward read off sampled images barely moves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = [
    "build_tiny_diffusion_pipeline",
    "build_tiny_flux_pipeline",
    "build_tiny_sana_pipeline",
    "build_tiny_sd3_pipeline",
]

#: Image side length of the tiny pipeline, in pixels (latents are 16 x 16).
TINY_RESOLUTION = 32

_BPE_CORPUS = (
    "a photo of a red square on a white background . a blue circle , a green triangle and a yellow star ; "
    "an image of the cat and the dog in the garden , high quality , beautiful painting , sunset over the sea"
)


def _tiny_clip_tokenizer(num_merges: int = 64, model_max_length: int = 77):
    """A ``CLIPTokenizer`` with the CLIP vocabulary layout at toy size.

    Ids 0-255 are the byte-level alphabet, 256-511 the same symbols with CLIP's end-of-word marker ``</w>``, then
    ``num_merges`` BPE merges learnt on a built-in sentence, then ``<|startoftext|>`` and ``<|endoftext|>`` (which is
    also the padding token, as in Stable Diffusion 1.x). Any text tokenises: unknown words fall back to bytes.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    learner = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    learner.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=2 * len(alphabet) + num_merges,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    learner.train_from_iterator([_BPE_CORPUS], trainer=trainer)
    merges = [tuple(merge) for merge in json.loads(learner.to_str())["model"]["merges"]][:num_merges]  # ("a", "b</w>")

    vocab: dict[str, int] = {}
    for token in alphabet + [symbol + "</w>" for symbol in alphabet] + ["".join(merge) for merge in merges]:
        vocab.setdefault(token, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def _text_encoder_config(tokenizer, **overrides):
    from transformers import CLIPTextConfig

    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=32,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs.update(overrides)
    return CLIPTextConfig(**kwargs)


def _calibrate_vae(vae, resolution: int = TINY_RESOLUTION) -> None:
    """Give the random VAE the two statistics of a trained one that training depends on.

    A trained VAE's posterior is nearly deterministic and its ``scaling_factor`` makes latents unit-variance (0.18215
    for SD 1.x). A random one has a posterior std far larger than the differences between images, so every image
    would look alike to the UNet. We keep the encoder's mean, set the log-variance to -12 (std ~0.0025) through the
    ``quant_conv`` 1x1 convolution, and set ``scaling_factor`` to 1 / std of the latent means of random images.
    """
    import torch

    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight.zero_()
        vae.quant_conv.bias.zero_()
        vae.quant_conv.weight[:channels, :channels, 0, 0] = torch.eye(channels)
        vae.quant_conv.bias[channels:] = -12.0
        colours = torch.rand(16, 3, 1, 1).expand(16, 3, resolution, resolution)
        probe = torch.cat([colours, torch.rand(16, 3, resolution, resolution)]) * 2 - 1
        means = vae.encode(probe).latent_dist.mean
    vae.register_to_config(scaling_factor=round(1.0 / means.std().item(), 5))


def build_tiny_diffusion_pipeline(
    directory: str | os.PathLike,
    seed: int = 0,
    sdxl: bool = False,
    prediction_type: str = "epsilon",
    vae: str = "random",
) -> str:
    """Build a tiny seeded text-to-image pipeline, save it to ``directory`` and return the path.

    Args:
        directory: where ``save_pretrained`` writes the pipeline; ``DiffusionPipeline.from_pretrained(path)`` loads it.
        seed: seeds the random initialisation of every network.
        sdxl: build a ``StableDiffusionXLPipeline`` (two text encoders, pooled embeddings, ``text_time``
            micro-conditioning) instead of a ``StableDiffusionPipeline``.
        prediction_type: what the UNet predicts, set on the ``DDPMScheduler``: ``"epsilon"`` (noise, as SD 1.5 and
            SDXL) or ``"v_prediction"`` (velocity, as SD 2.x at 768 px).
        vae: ``"random"`` (a random ``AutoencoderKL`` calibrated as a trained one: near-deterministic posterior,
            unit-variance latents) or ``"linear"`` (set so a decoded image's colour is a linear map of the latent;
            for tests whose reward reads colours of sampled images, see `_linear_vae`).

    Builds in about a second on a CPU. Images are 32 x 32 pixels.
    """
    import torch
    from diffusers import (
        DDPMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    _check_vae(vae)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    tokenizer = _tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_text_encoder_config(tokenizer))
    unet_kwargs = dict(
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
        cross_attention_dim=text_encoder.config.hidden_size,
    )
    if sdxl:
        tokenizer_2 = _tiny_clip_tokenizer()
        text_encoder_2 = CLIPTextModelWithProjection(_text_encoder_config(tokenizer_2))
        # SDXL: cross-attention sees both encoders' penultimate hidden states side by side; the added embedding sees
        # the pooled (projected) text embedding plus 6 sinusoidally embedded ints (original size, crop, target size).
        unet_kwargs.update(
            cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + text_encoder_2.config.projection_dim,
            use_linear_projection=True,
        )
    unet = UNet2DConditionModel(**unet_kwargs)
    autoencoder = _vae(vae)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )
    if sdxl:
        pipeline = StableDiffusionXLPipeline(
            vae=autoencoder,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,
        )
    else:
        pipeline = StableDiffusionPipeline(
            vae=autoencoder,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipeline.save_pretrained(directory)
    return str(directory)


def _tiny_t5_tokenizer(model_max_length: int = 64):
    """A ``T5Tokenizer`` (unigram) with T5's special-token layout at toy size: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2,
    the word-start marker, printable ASCII characters and a few whole words. Any ASCII text tokenises."""
    import string

    from transformers import T5Tokenizer

    words = ["a", "red", "blue", "square", "photo", "of", "the", "circle", "green"]
    pieces = ["\u2581", *string.ascii_letters, *string.digits, *string.punctuation, *("\u2581" + w for w in words)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [
        (piece, -1.0 - 0.01 * i) for i, piece in enumerate(pieces)
    ]
    # whole words score higher than their letters, so "red" is one token
    vocab = [
        (piece, -0.5) if piece.startswith("\u2581") and len(piece) > 1 else (piece, score) for piece, score in vocab
    ]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _tiny_t5_encoder(tokenizer, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _tiny_vae(shift: bool = False):
    """The tiny ``AutoencoderKL`` (32 px <-> 4 x 16 x 16), calibrated; ``shift=True`` also sets a ``shift_factor``
    (the latent mean of random images), as SD3's and Flux's VAEs carry one."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
    )
    _calibrate_vae(vae)
    if shift:
        with torch.no_grad():
            probe = torch.rand(16, 3, TINY_RESOLUTION, TINY_RESOLUTION) * 2 - 1
            mean = vae.encode(probe).latent_dist.mean.mean().item()
        vae.register_to_config(shift_factor=round(mean, 5))
    return vae


#: The linear VAE's colour -> latent map: the first three columns of the 4 x 4 Hadamard matrix / 2 (orthonormal
#: columns), so every latent channel mixes the three colours and the decoder's map back is the transpose.
_LINEAR_VAE_COLOURS = (
    (0.5, 0.5, 0.5),
    (0.5, -0.5, 0.5),
    (0.5, 0.5, -0.5),
    (0.5, -0.5, -0.5),
)


def _linear_vae(shift: bool = False):
    """An ``AutoencoderKL`` (32 px <-> 4 x 16 x 16) whose weights are set, not learnt, so that it is linear:
    ``encode`` averages each 2 x 2 block of pixels and maps its colour ``c`` (in ``[-1, 1]``) to ``A c`` (``A`` =
    `_LINEAR_VAE_COLOURS`, posterior std ~3e-7), ``decode`` maps a latent ``z`` to the colour ``A^T z`` upsampled 2 x
    2. So ``decode(encode(x)) = x`` for solid colours, and the colour of a decoded image is a fixed linear function of
    the latent the denoiser made, as a trained VAE's is near its data (a random one decodes almost every latent to
    the same grey). The image reward of samples then follows what the denoiser learnt.

    How: every residual block's second convolution is zero (the block is its shortcut: identity, or a channel
    selection where widths change), the mid-block has no attention, 3 x 3 convolutions use their centre tap and the
    up/downsamplers copy/average. Each signal ``a`` rides as ``(a, -a, K, -K)`` in one normalisation group (``K`` =
    100 from the input convolution's bias): the group's mean is 0 and its std ~``K / sqrt(2)`` whatever ``a`` is, so
    the output ``GroupNorm`` scales by a constant (to a relative 5e-5), and ``silu(y) - silu(-y) = y`` undoes the
    activation exactly. ``scaling_factor`` (and ``shift_factor`` with ``shift=True``) are set as `_tiny_vae` sets them.
    """
    import torch
    from diffusers import AutoencoderKL

    anchor = 100.0
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_RESOLUTION,
        mid_block_add_attention=False,
    )
    colours = torch.tensor(_LINEAR_VAE_COLOURS)  # (latent 4, rgb 3)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.zero_()
        encoder, decoder = vae.encoder, vae.decoder

        def carry(conv, rows, width):
            """``conv``'s centre tap: signal ``i`` (row ``i`` of ``rows``) as channels ``width*i + (0, 1, 2, 3)`` =
            ``(a, -a, K, -K)``."""
            for i, row in enumerate(rows):
                conv.weight[width * i, :, 1, 1] = row
                conv.weight[width * i + 1, :, 1, 1] = -row
                conv.bias[width * i + 2], conv.bias[width * i + 3] = anchor, -anchor

        def read(conv, count, width):
            for i in range(count):  # silu(a) - silu(-a) = a
                conv.weight[i, width * i, 1, 1], conv.weight[i, width * i + 1, 1, 1] = 1.0, -1.0

        # encoder: 3 -> 16 channels (4 latent signals x 4), average 2 x 2, 16 -> 32 (group width 8), out: mean 4 +
        # log-variance 4 (-30: the clamp's floor)
        carry(encoder.conv_in, colours, 4)
        encoder.down_blocks[0].downsamplers[0].conv.weight[range(16), range(16), :2, :2] = 0.25
        shortcut = encoder.down_blocks[1].resnets[0].conv_shortcut.weight
        for i in range(4):
            shortcut[range(8 * i, 8 * i + 4), range(4 * i, 4 * i + 4), 0, 0] = 1.0
        encoder.conv_norm_out.weight.fill_(anchor / 2)  # group (a, -a, K, -K, 0, 0, 0, 0): std sqrt(a^2 + K^2) / 2
        read(encoder.conv_out, 4, 8)
        encoder.conv_out.bias[4:] = -30.0
        vae.quant_conv.weight[range(8), range(8), 0, 0] = 1.0
        # decoder: latent -> 3 colours x 4 channels, copy through (32 wide, then the first 16), upsample, out: RGB
        vae.post_quant_conv.weight[range(4), range(4), 0, 0] = 1.0
        carry(decoder.conv_in, colours.T, 4)
        decoder.up_blocks[0].upsamplers[0].conv.weight[range(32), range(32), 1, 1] = 1.0
        decoder.up_blocks[1].resnets[0].conv_shortcut.weight[range(16), range(16), 0, 0] = 1.0
        decoder.conv_norm_out.weight.fill_(anchor / 2**0.5)  # group (a, -a, K, -K): std sqrt((a^2 + K^2) / 2)
        read(decoder.conv_out, 3, 4)

        probe = torch.rand(32, 3, 1, 1).expand(32, 3, TINY_RESOLUTION, TINY_RESOLUTION) * 2 - 1
        means = vae.encode(probe).latent_dist.mean
    vae.register_to_config(scaling_factor=round(1.0 / means.std().item(), 5))
    if shift:
        vae.register_to_config(shift_factor=round(means.mean().item(), 5))
    return vae


def _check_vae(kind: str) -> None:
    if kind not in ("random", "linear"):
        raise ValueError(f"vae must be 'random' or 'linear', got {kind!r}")


def _vae(kind: str, shift: bool = False):
    return _linear_vae(shift=shift) if kind == "linear" else _tiny_vae(shift=shift)


def build_tiny_sd3_pipeline(directory: str | os.PathLike, seed: int = 0, vae: str = "random") -> str:
    """Build a tiny seeded ``StableDiffusion3Pipeline``, save it to ``directory`` and return the path.

    Components as Stable Diffusion 3 / 3.5: an ``SD3Transformer2DModel`` (2 joint blocks, patch size 2, 4 latent
    channels), two ``CLIPTextModelWithProjection`` encoders whose penultimate hidden states (16 + 16 wide, zero-padded
    to 32) and pooled projections (16 + 16 = 32, ``pooled_projections``) condition it, a ``T5EncoderModel`` (width 32)
    whose hidden states are appended to the sequence, the tiny VAE with a ``shift_factor``, and a
    ``FlowMatchEulerDiscreteScheduler`` with SD3's static ``shift=3.0``. Images are 32 x 32 pixels. ``vae`` as in
    `build_tiny_diffusion_pipeline` (``"linear"``: decoded colours follow the latents).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    _check_vae(vae)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = _tiny_clip_tokenizer(), _tiny_clip_tokenizer()
    clip = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, projection_dim=16)
    text_encoder = CLIPTextModelWithProjection(_text_encoder_config(tokenizer, **clip))
    text_encoder_2 = CLIPTextModelWithProjection(_text_encoder_config(tokenizer_2, **clip))
    tokenizer_3 = _tiny_t5_tokenizer()
    text_encoder_3 = _tiny_t5_encoder(tokenizer_3)
    transformer = SD3Transformer2DModel(
        sample_size=TINY_RESOLUTION // 2,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=32,
        pos_embed_max_size=16,
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(vae, shift=True),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipeline.save_pretrained(directory)
    return str(directory)


def build_tiny_flux_pipeline(
    directory: str | os.PathLike, seed: int = 0, layout: str = "dev", vae: str = "random"
) -> str:
    """Build a tiny seeded ``FluxPipeline``, save it to ``directory`` and return the path.

    Components as Flux.1: a ``FluxTransformer2DModel`` (1 double-stream and 1 single-stream block) over packed
    latents (each 2 x 2 patch of the 4-channel latent is one 16-wide token, with positional ids), a ``CLIPTextModel``
    whose pooled output is ``pooled_projections``, a ``T5EncoderModel`` whose hidden states are the text tokens, the
    tiny VAE with a ``shift_factor``, and a ``FlowMatchEulerDiscreteScheduler``. ``layout="dev"`` (Flux.1-dev): a
    guidance embedding and the resolution-dependent (dynamic) timestep shift; ``layout="schnell"``: no guidance
    embedding and a static shift of 1, as Flux.1-schnell ships. Images are 32 x 32 pixels. ``vae`` as in
    `build_tiny_diffusion_pipeline` (``"linear"``: decoded colours follow the latents).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    if layout not in ("dev", "schnell"):
        raise ValueError(f"layout must be 'dev' or 'schnell', got {layout!r}")
    _check_vae(vae)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_text_encoder_config(tokenizer))
    tokenizer_2 = _tiny_t5_tokenizer()
    text_encoder_2 = _tiny_t5_encoder(tokenizer_2)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=layout == "dev",
        axes_dims_rope=(4, 4, 8),
    )
    if layout == "dev":
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_image_seq_len=16,
            max_image_seq_len=256, base_shift=0.5, max_shift=1.15,
        )  # fmt: skip
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    pipeline = FluxPipeline(
        scheduler=scheduler,
        vae=_vae(vae, shift=True),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipeline.save_pretrained(directory)
    return str(directory)


def _tiny_gemma_tokenizer(model_max_length: int = 64):
    """A ``GemmaTokenizer`` (BPE, SentencePiece-style word marker) at toy size: ``<pad>`` 0, ``<eos>`` 1, ``<bos>``
    2, ``<unk>`` 3, ``<mask>`` 4, printable ASCII characters, and merges that make a few whole words one token."""
    import string

    from transformers import GemmaTokenizer

    words = ["a", "red", "blue", "square", "photo", "of", "the", "circle", "green"]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "\u2581", *string.ascii_letters, *string.digits]
    tokens += list(string.punctuation)
    merges = []
    for word in words:  # "\u2581" + "r" -> "\u2581r", "\u2581r" + "e" -> ..., one token per listed word
        piece = "\u2581"
        for letter in word:
            if (piece, letter) not in merges:
                merges.append((piece, letter))
            piece += letter
            if piece not in tokens:
                tokens.append(piece)
    vocab = {token: index for index, token in enumerate(tokens)}
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def build_tiny_sana_pipeline(directory: str | os.PathLike, seed: int = 0) -> str:
    """Build a tiny seeded ``SanaPipeline``, save it to ``directory`` and return the path.

    Components as Sana: a ``SanaTransformer2DModel`` (2 blocks of linear self-attention and cross-attention, patch
    size 1, 4 latent channels) whose cross-attention reads the hidden states of a ``Gemma2Model`` (width 32, 2 layers)
    under their attention mask, a deterministic ``AutoencoderDC`` (32 px <-> 4 x 16 x 16, ``scaling_factor`` set so
    latents of random images have unit variance), and a ``DPMSolverMultistepScheduler`` on flow sigmas with
    ``flow_shift=3.0`` (``prediction_type="flow_prediction"``). Images are 32 x 32 pixels.
    """
    import torch
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tiny_gemma_tokenizer()
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
    )  # fmt: skip
    transformer = SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32,
        sample_size=TINY_RESOLUTION // 2, patch_size=1,
    )  # fmt: skip
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        downsample_block_type="conv", upsample_block_type="interpolate",
    )  # fmt: skip
    with torch.no_grad():
        colours = torch.rand(16, 3, 1, 1).expand(16, 3, TINY_RESOLUTION, TINY_RESOLUTION)
        probe = torch.cat([colours, torch.rand(16, 3, TINY_RESOLUTION, TINY_RESOLUTION)]) * 2 - 1
        latents = vae.encode(probe).latent
    vae.register_to_config(scaling_factor=round(1.0 / latents.std().item(), 5))
    scheduler = DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
    pipeline = SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipeline.save_pretrained(directory)
    return str(directory)
