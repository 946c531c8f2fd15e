"""safe-rlhf: Safe RLHF (PPO with reward and cost models and Lagrange multipliers) on DeepSpeed and hydra."""

import os as _os
import sys as _sys

# DeepSpeed JIT-compiles CPU ops into torch's extension cache. One cache per environment: a shared one
# (~/.cache/torch_extensions) is rebuilt (about a minute) every time another virtual environment used it last.
_os.environ.setdefault("TORCH_EXTENSIONS_DIR", _os.path.join(_sys.prefix, "torch_extensions"))

__version__ = "0.1.0"
