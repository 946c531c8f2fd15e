"""Compile DeepSpeed's CPU ops once, at install time, so that no test or run pays for it.

``make`` runs this after installing::

    python -m safe_rlhf.prebuild

On a CPU-only machine DeepSpeed JIT-compiles its shared-memory communication op (~20 s) on the first
``init_distributed`` and its CPU Adam (~30 s) on the first optimizer offload; both land in torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) and are reused afterwards. A no-op on GPU machines.
"""

from __future__ import annotations

import time


def main() -> None:
    import torch

    if torch.cuda.is_available():
        print("CUDA present: DeepSpeed builds its GPU ops on demand; nothing to prebuild")
        return
    from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, ShareMemCommBuilder

    for builder in (ShareMemCommBuilder(), CPUAdamBuilder()):
        start = time.perf_counter()
        builder.load(verbose=False)
        print(f"{builder.name}: ready ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
