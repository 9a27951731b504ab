"""`laudnet` command line: one sub-command per module, imported only when it runs.

Each sub-command module exposes `add_arguments(parser)` and `run(args) -> int`. Imports are lazy so that light
commands (`laudnet latency`) answer without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("laudnet.train.demo", "train a small dynamic network on fashion-canvas on the CPU, evaluate and plot it"),
    "flops": ("laudnet.inspect_cli", "build each model, run a batch, print per-block activation rates and FLOPs"),
    "models": ("laudnet.inspect_cli", "list the registered models"),
    "train": ("laudnet.train.cli", "train a static or dynamic network or a detector (--task detection|instance); "
                                   "-c config.yaml; torchrun"),
    "eval": ("laudnet.train.cli", "evaluate a checkpoint: top-1/top-5 (or COCO AP), FLOPs, per-block activation "
                                  "rates"),
    "viz": ("laudnet.train.cli", "plot per-block activation rates, spatial masks and detections of checkpoints"),
    "latency": ("laudnet.latency.cli", "predict static and dynamic latency of a model on a device"),
    "granularity": ("laudnet.latency.cli", "latency ratio against activation rate per S and G; plots, table, advice"),
    "calibrate": ("laudnet.latency.cli", "measure the local device and write a hardware spec for --hardware"),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``laudnet <cmd>: error: <message> (see laudnet <cmd> --help)``,
    like every other error of the command line, instead of the full usage (21 lines for ``train``) before it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _top_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="laudnet",
        description="Latency-aware unified dynamic networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command", help="one of: " + ", ".join(COMMANDS))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _top_parser().error(f"unknown command {name!r}; choose from: {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    parser = _Parser(prog=f"laudnet {name}", description=COMMANDS[name][1])
    add = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
    add(parser)
    args = parser.parse_args(rest)
    runner = getattr(module, f"run_{name}", None) or module.run
    try:
        code = int(runner(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except KeyboardInterrupt:  # training saves on the first Ctrl-C; this is a second one, or another command
        print(f"laudnet {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`laudnet latency ... | head -1`): stop quietly, as a C tool killed by SIGPIPE does.
        # stdout is pointed at /dev/null so that Python's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
