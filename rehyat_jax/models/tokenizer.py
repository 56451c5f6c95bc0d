"""The umT5 tokenizer as Wan2.1 applies it: clean the prompt, SentencePiece-encode, append EOS, pad to 512.

Wan (the original release's ``wan/modules/tokenizers.py`` ``HuggingfaceTokenizer(clean='whitespace', seq_len=512)``) calls the
transformers T5 tokenizer of ``google/umt5-xxl`` with ``padding='max_length', truncation=True,
max_length=512`` after cleaning each prompt with ``whitespace_clean(basic_clean(text))``:

- ``basic_clean``: ``ftfy.fix_text`` (mojibake, curly quotes, ligatures, full-width forms, ...), HTML
  unescaping twice, strip;
- ``whitespace_clean``: every run of whitespace (the ``regex`` module's ``\\s``) becomes one space, strip.

This module does the same with ``sentencepiece`` on the checkpoint's ``spiece.model`` (the transformers
tokenizer gives the same ids for plain text; it differs only on literal special-token strings such as
``</s>`` or ``<extra_id_0>`` inside a prompt, which it turns into those tokens). Truncation keeps the first
``text_len - 1`` pieces and then EOS, as transformers does.

``ftfy`` is not a dependency of this project: when it is importable it is used (exactly Wan's cleaning);
otherwise ``fix_text`` is skipped, which only changes prompts that ``ftfy`` would repair (curly quotes and the
like); ``UMT5Tokenizer.uses_ftfy`` tells which happened.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import sentencepiece

SPIECE_FILE = "spiece.model"
# Where the tokenizer lives inside the checkpoint folders that ship one.
TOKENIZER_SUBDIRS = ("google/umt5-xxl", "tokenizer")
PAD_ID, EOS_ID = 0, 1
WAN_TEXT_LEN = 512
# The ``regex`` module's \s is Unicode White_Space; Python's re \s (str.isspace) also matches the
# information separators U+001C..U+001F, which White_Space excludes. Everything else agrees.
_WHITESPACE = re.compile(r"[^\S\x1c-\x1f]+")


def _default_fix_text() -> Callable[[str], str] | None:
  try:
    import ftfy  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return ftfy.fix_text


def clean_prompt(text: str, fix_text: Callable[[str], str] | None = None) -> str:
  """Wan's 'whitespace' cleaning: ``fix_text`` (ftfy's, when given), HTML-unescape twice, collapse whitespace,
  strip."""
  if fix_text is not None:
    text = fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return _WHITESPACE.sub(" ", text).strip()


def find_spiece_model(path: str | os.PathLike) -> Path:
  """The ``spiece.model`` at ``path``: the file itself, a folder holding it, or a checkpoint folder with it in
  ``google/umt5-xxl/`` (Wan release) or ``tokenizer/`` (diffusers)."""
  path = Path(path)
  if path.is_file():
    return path
  candidates = [path / SPIECE_FILE] + [path / sub / SPIECE_FILE for sub in TOKENIZER_SUBDIRS]
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  looked = ", ".join(str(c) for c in candidates)
  hint = (" (found tokenizer.json: this tokenizer needs the SentencePiece model file, which google/umt5-xxl "
          "ships as spiece.model)" if any((c.parent / "tokenizer.json").is_file() for c in candidates) else "")
  raise FileNotFoundError(f"umT5 tokenizer not found: no {SPIECE_FILE} at {looked}{hint}")


class UMT5Tokenizer:
  """``tokenizer(texts) -> (ids, mask)``, both int32 numpy [B, text_len]; mask is 1 on tokens (EOS included)."""

  def __init__(self, path: str | os.PathLike, text_len: int = WAN_TEXT_LEN,
               fix_text: Callable[[str], str] | None | str = "ftfy"):
    """
    Args:
      path: ``spiece.model``, or a folder holding it (see ``find_spiece_model``).
      text_len: padded length (Wan: 512); longer prompts keep text_len - 1 pieces and EOS.
      fix_text: 'ftfy' for ``ftfy.fix_text`` when installed (Wan's cleaning), a callable, or None to skip.
    """
    if text_len < 1:
      raise ValueError(f"text_len must be positive; got {text_len}")
    if fix_text == "ftfy":
      self.fix_text = _default_fix_text()
      self.uses_ftfy = self.fix_text is not None
    elif fix_text is None or callable(fix_text):
      self.fix_text, self.uses_ftfy = fix_text, False
    else:
      raise ValueError(f"fix_text must be 'ftfy', a callable or None; got {fix_text!r}")
    self.model_file = find_spiece_model(path)
    self.text_len = text_len
    self.processor = sentencepiece.SentencePieceProcessor(model_file=str(self.model_file))
    if self.processor.pad_id() != PAD_ID or self.processor.eos_id() != EOS_ID:
      raise ValueError(f"{self.model_file}: expected T5 special ids pad={PAD_ID}, eos={EOS_ID}; the model has "
                       f"pad={self.processor.pad_id()}, eos={self.processor.eos_id()}")

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  def clean(self, text: str) -> str:
    return clean_prompt(text, self.fix_text)

  def encode(self, text: str) -> list[int]:
    """Token ids of one prompt after cleaning, truncated to text_len - 1 pieces, then EOS (no padding)."""
    return self.processor.encode(self.clean(text))[:self.text_len - 1] + [EOS_ID]

  def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(texts, str):
      texts = [texts]
    ids = np.full((len(texts), self.text_len), PAD_ID, np.int32)
    mask = np.zeros((len(texts), self.text_len), np.int32)
    for row, text in enumerate(texts):
      tokens = self.encode(text)
      ids[row, :len(tokens)] = tokens
      mask[row, :len(tokens)] = 1
    return ids, mask
