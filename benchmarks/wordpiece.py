"""BERT's uncased tokenizer (basic split + greedy WordPiece) in plain Python, and the real text it tokenizes.

Text: the prose of the Python reference manual that every CPython ships (``pydoc_data.topics``, PSF licence,
~130k WordPiece tokens), so the transformer benchmark reads real English without a download. The tokenizer follows
BERT's BasicTokenizer (clean, lower-case, strip accents, split on whitespace and punctuation, CJK characters apart)
and its greedy longest-match WordPiece; on the 85 passages of the issue-14 study it gave the same ids as HF
``tokenizers.BertWordPieceTokenizer(lowercase=True)`` for all 129,665 tokens.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np

__all__ = ["load_vocab", "tokenize", "text_batch"]

VOCAB = Path(__file__).resolve().parent / "data" / "bert-base-uncased-vocab.txt"  # licence: data/README.md
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def load_vocab(path: Path = VOCAB) -> dict[str, int]:
    tokens = path.read_text(encoding="utf-8").split("\n")
    return {token: i for i, token in enumerate(tokens[:-1] if tokens[-1] == "" else tokens)}


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(ch).startswith("P")


def _basic_words(text: str) -> list[str]:
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp in (0, 0xFFFD) or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            chars.append(" ")
        elif any(lo <= cp <= hi for lo, hi in _CJK):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    words = []
    for word in "".join(chars).lower().split():
        word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                words += [current, ch] if current else [ch]
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


def _wordpiece(word: str, vocab: dict[str, int], max_chars: int = 100) -> list[str]:
    if len(word) > max_chars:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while start < end and ("##" if start else "") + word[start:end] not in vocab:
            end -= 1
        if start == end:
            return ["[UNK]"]
        pieces.append(("##" if start else "") + word[start:end])
        start = end
    return pieces


def tokenize(text: str, vocab: dict[str, int]) -> list[int]:
    return [vocab[piece] for word in _basic_words(text) for piece in _wordpiece(word, vocab)]


def text_batch(seq_len: int, batch: int) -> np.ndarray:
    """``batch`` windows of consecutive real text, each ``[CLS] ... [SEP]`` of ``seq_len`` tokens: int64 (B, N)."""
    import pydoc_data.topics as topics

    vocab, body, ids = load_vocab(), seq_len - 2, []
    for key in sorted(topics.topics):
        ids += tokenize(re.sub(r"\s+", " ", topics.topics[key]).strip(), vocab)
        if len(ids) >= batch * body:
            break
    rows = [[vocab["[CLS]"], *ids[i * body:(i + 1) * body], vocab["[SEP]"]] for i in range(batch)]
    return np.array(rows, dtype=np.int64)
