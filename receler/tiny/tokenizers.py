"""Tokenizers built entirely offline, for the tiny test models.

A word-level vocabulary with a character fallback is enough: every English word in ``WORDS`` is one
token (so a concept such as "nudity" or "red" is one token inside any prompt, as it would be a
contiguous run of tokens with a real tokenizer), and any other text still tokenizes, letter by letter.
"""

import string

from transformers import T5Tokenizer

# Everyday caption words plus the vocabulary of the bundled world (colours, shapes, motion) and the
# concepts the tests erase. Order matters: it fixes the token ids, so only append.
WORDS = """
a an the of in on at to with and or by for from into over under near behind between while is are
person people man woman child girl boy dog cat horse bird car bicycle house tree street beach city
forest mountain river sea sky park room kitchen garden field road snow rain sun night day morning
walking running dancing swimming sitting standing playing flying driving jumping smiling reading
painting photo video scene close up portrait landscape style art artistic oil watercolor sketch
nude nudity naked body bare skin topless undressed clothed dressed clothing shirt dress coat hat
swimsuit bikini towel blanket sunbathing model statue sculpture museum gallery fashion
red green blue yellow purple cyan orange white black gray grey pink brown
circle square triangle shape shapes moving left right up down background
van gogh picasso monet cartoon anime realistic cinematic beautiful slowly quickly happy young old
""".split()

SPECIAL = ["<pad>", "</s>", "<unk>"]


def t5_vocabulary() -> list:
    """``[(piece, log_prob)]`` for a T5-style Unigram: specials, whole words, then a character fallback.

    Whole words score higher than their spelling in characters, so Unigram keeps them whole.
    """
    pieces = [(tok, 0.0) for tok in SPECIAL]
    pieces += [("\u2581" + word, -2.0) for word in WORDS]
    pieces.append(("\u2581", -8.0))
    for ch in string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation:
        pieces += [("\u2581" + ch, -9.0), (ch, -10.0)]
    vocab, seen = [], set()
    for piece, score in pieces:  # first occurrence wins: a one-letter word keeps its word score
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))
    return vocab


def build_t5_tokenizer(model_max_length: int = 226) -> T5Tokenizer:
    """A T5 tokenizer (``<pad>``=0, ``</s>``=1, ``<unk>``=2) over :func:`t5_vocabulary`."""
    return T5Tokenizer(vocab=t5_vocabulary(), extra_ids=0, model_max_length=model_max_length)


def tiny_t5_config(vocab_size: int, text_dim: int) -> dict:
    """Settings of the tiny T5-style text encoders (T5 for CogVideoX, UMT5 for Wan): two layers, four heads,
    the tokenizer's pad (0) and eos (1) ids, no dropout so encodings are deterministic."""
    return dict(vocab_size=vocab_size, d_model=text_dim, d_kv=8, d_ff=2 * text_dim, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                dropout_rate=0.0)
