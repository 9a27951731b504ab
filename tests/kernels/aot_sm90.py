"""Compile recorded Triton launches for sm_90 ahead of time (no GPU): `python aot_sm90.py specs.json`.

Each spec names a kernel (its `LazyKernel` by module and name), its signature (pointer dtypes, integer and constexpr
arguments), the arguments divisible by 16 (as Triton's launcher specialises them at run time: aligned pointers and
such integers, which decide for instance whether a loop's loads are pipelined), its constexpr values and launch
options (`test_kernels_compile.py` records them). Prints one JSON line per kernel: its name, shared memory, the
number of asynchronous global-to-shared copies (a software-pipelined K loop has some) and, where Triton ships
`cuobjdump`, registers per thread and local memory (register spills). Exit status 0: all
compiled; 1: a compile error (printed); 3: this Triton has another ahead-of-time API (the reason printed).
Run without TRITON_INTERPRET: Triton decides at import whether its own helpers are interpreted.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def main(path: str) -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    for spec in json.loads(Path(path).read_text()):
        jit = getattr(importlib.import_module(spec["module"]), spec["name"])._get()  # a LazyKernel, compiled mode
        names = jit.arg_names
        try:
            src = ASTSource(fn=jit, signature=spec["signature"],
                            constexprs={(names.index(k),): v for k, v in spec["constexprs"].items()},
                            attrs={(names.index(k),): [["tt.divisibility", 16]] for k in spec["divisible"]})
        except TypeError as e:
            print(f"this Triton's ASTSource differs: {e}")
            return 3
        try:
            kernel = triton.compile(src, target=target, options=spec["options"])
        except Exception as e:  # the compiler's own error types differ between versions
            print(f"{spec['name']} with {spec['constexprs']}: {type(e).__name__}: {e}")
            return 1
        if not kernel.asm.get("cubin"):
            print(f"{spec['name']}: no cubin")
            return 1
        ttgir = kernel.asm.get("ttgir", "")
        print(json.dumps(dict(name=spec["name"], shared=kernel.metadata.shared,
                              async_copies=ttgir.count("async_copy_global_to_local"), **_resources(kernel))))
    return 0


def _resources(kernel) -> dict:
    """Registers per thread and local (spill) bytes of the cubin, from Triton's own `cuobjdump` (empty without it)."""
    import re
    import subprocess
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    found = {k: int(v) for k, v in re.findall(r"\b(REG|LOCAL):(\d+)", usage)}
    return {"registers": found["REG"], "local_bytes": found["LOCAL"]} if {"REG", "LOCAL"} <= found.keys() else {}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
