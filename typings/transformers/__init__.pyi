# Minimal typing for the parts of transformers that strata uses (transformers' own annotations
# leave many types unknown under strict checking). Extend with care; declare only what is called.
import os
from collections.abc import Mapping, Sequence
from typing import Literal

class PreTrainedTokenizerBase:
    chat_template: str | dict[str, str] | None
    @property
    def eos_token_id(self) -> int | None: ...
    def __len__(self) -> int: ...
    def convert_ids_to_tokens(self, ids: int) -> str | None: ...
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...
    def decode(
        self,
        token_ids: Sequence[int],
        *,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str: ...
    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, object]],
        *,
        tools: Sequence[Mapping[str, object]] | None = None,
        tokenize: Literal[False],
        add_generation_prompt: bool = False,
        **template_arguments: object,
    ) -> str: ...

class AutoTokenizer:
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str]
    ) -> PreTrainedTokenizerBase: ...
