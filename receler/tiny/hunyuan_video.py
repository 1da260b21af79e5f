"""A tiny HunyuanVideo pipeline with random weights, laid out like HunyuanVideo, built offline.

Render it with the prompt template saved in its folder and a short text length::

    pipe = HunyuanVideoPipeline.from_pretrained(folder)
    template = load_prompt_template(folder)  # TINY_PROMPT_TEMPLATE (None for real weights: the default)
    video = pipe(
        "a red car",
        prompt_template=template,
        max_sequence_length=template["max_sequence_length"],  # TEXT_LEN = 16 Llama tokens (real: 256)
        guidance_scale=6.0,  # embedded guidance, as for the real model
        height=32, width=32,  # multiples of 16
        num_frames=9,  # 4k + 1
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),  # CPU generator, for reproducibility
        output_type="np",
    ).frames

The pipeline's default template crops 95 tokens, counted with the real Llama-3 tokenizer; the tiny tokenizer
needs ``TINY_PROMPT_TEMPLATE``, whose ``crop_start`` is its own token count of the text before the prompt.

The tiny Llama tokenizer is a SentencePiece-style BPE (``▁`` for spaces, byte fallback) because transformers 5
always rebuilds a ``LlamaTokenizerFast`` that way when it loads one from a folder; a byte-level (Llama-3 style)
one would come back from ``from_pretrained`` tokenizing differently. Every word of
``receler.tiny.tokenizers.WORDS`` is one token, with a leading ``▁`` or without: the first word of a
templated prompt follows a newline and has none ("nudity" there, "▁nudity" elsewhere). Other text is
spelled out.
"""

import json
import logging
import string
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LlamaConfig, LlamaModel, LlamaTokenizerFast

from ..families.hunyuan_video import SCHEDULER
from .tokenizers import WORDS

logger = logging.getLogger(__name__)

TEXT_LEN = 16  # max_sequence_length to render with: Llama tokens kept after cropping the template

BOS, EOS, PAD, UNK = "<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<unk>"
TEMPLATE_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# Same shape as diffusers' DEFAULT_PROMPT_TEMPLATE (system instruction, then the user prompt), shorter.
# crop_start counts BOS and every token before "{}"; tests check it against the tiny tokenizer.
# max_sequence_length is ours (the pipeline ignores the key): the text length to render with, saved with
# the folder so that code loading it needs no family-specific constant.
TINY_PROMPT_TEMPLATE = {
    "template": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Describe the video: the people, the scene, the style and the background.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    ),
    "crop_start": 36,
    "max_sequence_length": TEXT_LEN,
}

LLAMA_SPECIALS = [UNK, BOS, EOS, PAD, *TEMPLATE_TOKENS, *(f"<0x{i:02X}>" for i in range(256))]
LLAMA_ALPHABET = "\u2581" + string.ascii_letters + string.digits + string.punctuation


def _train_bpe(model: models.BPE, corpus: list, **trainer_kwargs) -> tuple:
    """Train ``model`` on ``corpus`` until every corpus word is one token; return ``(vocab, merges)``.

    The vocabulary is far below its cap, so training stops when nothing is left to merge, and the result
    is the same in every process.
    """
    tokenizer = Tokenizer(model)
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=0, show_progress=False, **trainer_kwargs)
    tokenizer.train_from_iterator(corpus, trainer)
    trained = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return trained["vocab"], merges


def build_llama_tokenizer() -> LlamaTokenizerFast:
    """A Llama tokenizer whose words are whole tokens, with the prompt template's special tokens.

    Layout as transformers rebuilds it on loading: BPE over ``▁``-joined text (no pre-split), byte
    fallback for any character outside the alphabet, BOS added, padding on the right (the pipeline crops
    the template from the left, so the prompt must start at the same index in every row).
    """
    vocab, merges = _train_bpe(
        models.BPE(),
        [w for word in WORDS for w in ("\u2581" + word, word)],
        special_tokens=LLAMA_SPECIALS,
        initial_alphabet=list(LLAMA_ALPHABET),
    )
    return _llama_tokenizer(vocab, merges)


def build_char_llama_tokenizer() -> LlamaTokenizerFast:
    """A Llama tokenizer that spells all text out, one character per token (no merges).

    A tokenizer other than the one a template's ``crop_start`` was counted with: diffusers' default crop
    of 95 tokens lands inside the template's system text, and the prompt is truncated away.
    """
    vocab = {token: i for i, token in enumerate(LLAMA_SPECIALS + list(LLAMA_ALPHABET))}
    return _llama_tokenizer(vocab, [])


def _llama_tokenizer(vocab: dict, merges: list) -> LlamaTokenizerFast:
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    )
    return LlamaTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=TEMPLATE_TOKENS,
        add_bos_token=True,
        add_eos_token=False,
        padding_side="right",
    )


def build_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer whose words are whole tokens; other text falls back to byte-level characters.

    CLIP's layout: the 256 byte characters, the same with ``</w>`` (end of word), the merged tokens, then
    the two specials. Written as ``vocab.json`` + ``merges.txt``, the files CLIP ships, and read back.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    word_ends = [c + "</w>" for c in alphabet]
    # Listing the word-end characters up front fixes their ids; the trainer would otherwise number them
    # in hash order, and ties between merges would then fall differently from one process to the next.
    _, merges = _train_bpe(
        models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"),
        WORDS,
        special_tokens=word_ends,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
    )
    tokens = alphabet + word_ends + ["".join(m) for m in merges]
    vocab = {}
    for token in tokens + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def load_prompt_template(model_path):
    """The prompt template saved with a tiny pipeline, or ``None`` (the pipeline's default, right for real
    HunyuanVideo weights) when ``model_path`` has none (including hub ids)."""
    path = Path(model_path) / "prompt_template.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def build_tiny_hunyuan_video(
    seed: int = 0,
    heads: int = 2,
    head_dim: int = 16,
    rope_axes_dim: tuple = (4, 6, 6),
    text_dim: int = 32,
    clip_dim: int = 32,
    llama_tokenizer: str = "words",
) -> HunyuanVideoPipeline:
    """A HunyuanVideo pipeline small enough to render 9 frames at 32x32 in well under a second on CPU.

    ``rope_axes_dim`` (frames, height, width) must sum to ``head_dim`` (real: 16 + 56 + 56 = 128).
    ``llama_tokenizer="chars"`` builds it with :func:`build_char_llama_tokenizer` and without a template
    file, as a folder made elsewhere would be: the family then uses diffusers' default template (its
    text length of 256 tokens, so text encoding is slower).
    """
    if sum(rope_axes_dim) != head_dim:
        raise ValueError(f"rope_axes_dim {rope_axes_dim} must sum to head_dim {head_dim}")
    if llama_tokenizer not in ("words", "chars"):
        raise ValueError(f"llama_tokenizer must be 'words' or 'chars', got {llama_tokenizer!r}")
    torch.manual_seed(seed)
    chars = llama_tokenizer == "chars"
    tokenizer = build_char_llama_tokenizer() if chars else build_llama_tokenizer()
    # The pipeline reads the third-to-last hidden state (it skips 2 layers, as with the real 32-layer
    # Llama), so 3 layers leave one layer's worth of text features.
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_dim,
            intermediate_size=2 * text_dim,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048 if chars else 512,  # the default template spelled out: ~900 tokens
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    tokenizer_2 = build_clip_tokenizer()
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=clip_dim,
            intermediate_size=2 * clip_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,  # the pipeline always pads CLIP prompts to 77
            projection_dim=clip_dim,
            bos_token_id=tokenizer_2.bos_token_id,
            eos_token_id=tokenizer_2.eos_token_id,  # the pooled output is read at the first EOS
            pad_token_id=tokenizer_2.pad_token_id,
        )
    )
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        num_layers=1,
        num_single_layers=2,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=text_dim,
        pooled_projection_dim=clip_dim,
        rope_axes_dim=tuple(rope_axes_dim),
        guidance_embeds=True,
    )
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=2,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    )
    pipe = HunyuanVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        tokenizer_2=tokenizer_2,
        text_encoder_2=text_encoder_2,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
    )
    if not chars:  # a character-level folder carries no template: its crop is counted from its tokenizer
        pipe.prompt_template = dict(TINY_PROMPT_TEMPLATE)  # the family saves it with the folder (prompt_template.json)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # as from_pretrained leaves them, so the in-memory pipeline renders the same
    logger.debug("built a tiny HunyuanVideo pipeline (seed %d)", seed)
    return pipe
