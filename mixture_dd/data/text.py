"""Character vocabularies: token i is `alphabet[i]`."""

from __future__ import annotations

import numpy as np

# Newline first, then printable ASCII 32..126: 96 symbols.
PYDOC_ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
# text8 is lower-case letters and single spaces only.
TEXT8_ALPHABET = " abcdefghijklmnopqrstuvwxyz"


def _lookup(alphabet: str, unknown: str | None) -> np.ndarray:
  """Table [128] from ASCII code to token; -1 marks characters not covered."""
  table = np.full(128, -1, np.int32)
  for i, ch in enumerate(alphabet):
    table[ord(ch)] = i
  if unknown is not None:
    table[table < 0] = alphabet.index(unknown)
  return table


def encode(text: str, alphabet: str = PYDOC_ALPHABET, unknown: str | None = "?") -> np.ndarray:
  """String -> tokens [len(text)] int32; characters outside map to `unknown`.

  With `unknown=None`, a character outside the alphabet is an error.
  """
  codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  table = _lookup(alphabet, unknown)
  non_ascii = codes >= 128
  tokens = table[np.where(non_ascii, 0, codes)]
  if unknown is not None:
    tokens[non_ascii] = alphabet.index(unknown)
  elif non_ascii.any() or (tokens < 0).any():
    bad = sorted({c for c in text if c not in alphabet})[:10]
    raise ValueError(
      f"characters {bad!r} are not in the alphabet; pass "
      "unknown='?' (or another alphabet symbol) to map them."
    )
  return tokens.astype(np.int32)


def decode(tokens: np.ndarray, alphabet: str = PYDOC_ALPHABET) -> str:
  """Tokens [L] int -> string."""
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(
      f"decode takes one sequence [length], got shape {tokens.shape}; decode rows one at a time."
    )
  if tokens.size and (tokens.min() < 0 or tokens.max() >= len(alphabet)):
    raise ValueError(
      f"tokens in [{tokens.min()}, {tokens.max()}] are outside the vocabulary [0, {len(alphabet)})."
    )
  return "".join(alphabet[t] for t in tokens.tolist())
