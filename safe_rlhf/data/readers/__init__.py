"""Dataset readers: one module per dataset family, each registering its readers by name on import.

Registered names: ``pku-safe-rlhf`` (+ ``-30k``, ``-10k``, ``-single-dimension``, ``-prompt``, ``-qa``),
``beavertails``, ``beavertails-evaluation``, ``beavertails-v``, ``helpsteer``, ``helpsteer2``, ``hh-rlhf``,
``multifaceted``, ``alpaca``, ``sft``, ``prompts``, ``toyworld``, and the image-question datasets ``spa-vl``,
``vlfeedback``, ``align-anything-ti2t`` (``multimodal.py``). Add a format by writing record parsers and calling
:func:`register_reader` in a module imported here.
"""

from safe_rlhf.data.readers import beavertails, generic, helpsteer, hh_rlhf, multifaceted, multimodal, pku, toyworld
from safe_rlhf.data.readers.files import RawRecord
from safe_rlhf.data.readers.registry import (
    OpenedSource,
    Reader,
    RecordParser,
    available_readers,
    get_reader,
    register_reader,
)

__all__ = [
    "OpenedSource",
    "RawRecord",
    "Reader",
    "RecordParser",
    "available_readers",
    "beavertails",
    "generic",
    "get_reader",
    "helpsteer",
    "hh_rlhf",
    "multifaceted",
    "multimodal",
    "pku",
    "register_reader",
    "toyworld",
]
