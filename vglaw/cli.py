"""The vglaw command line: vglaw <command> --help for each command."""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys

from .commands import (calibrate, convert, demo_command, export, leakage, predict, prepare, push, serve, synth, train,
                       visualize)
from .commands import eval as eval_command
from .commands.options import HelpFormatter
from .errors import VglawError

# (name, module with add_arguments(parser) and run(args), help), in the order `vglaw --help` lists them
COMMANDS = [
    ("convert", convert, "convert another implementation's checkpoint to vglaw's format"),
    ("export", export, "the whole model as one ONNX graph (needs the export extra)"),
    ("push", push, "upload a checkpoint directory to a Hugging Face Hub model repo"),
    ("synth", synth, "generate a synthetic referring dataset in the REFER layout"),
    ("prepare", prepare, "check a dataset and write vglaw's prepared form"),
    ("leakage", leakage, "how many images of each split a COCO annotation file contains"),
    ("train", train, "train a model (also under torchrun --nproc_per_node N -m vglaw train)"),
    ("eval", eval_command, "REC/RES metrics of a checkpoint on prepared splits"),
    ("calibrate", calibrate, "fit a checkpoint's confidence calibrator (answers' scores) on a split"),
    ("predict", predict, "ground expressions in your own image, or the pairs of a file"),
    ("serve", serve, "a web page and HTTP API for grounding (needs the demo extra)"),
    ("visualize", visualize, "ground truth vs prediction panels for dataset samples"),
    ("demo", demo_command, "run the bundled demo model on a fresh synthetic set"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vglaw", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, summary in COMMANDS:
        sub = commands.add_parser(name, help=summary, formatter_class=HelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _check_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Name the first option in ``argv`` that its command does not have (with a suggestion), as
    that command's usage error. argparse would first complain that a required option is missing
    (``predict --txt x``: "required: --text") and never name the misspelled one."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    position = next((i for i, arg in enumerate(argv) if arg in commands.choices), None)
    if position is None:
        return
    command = commands.choices[argv[position]]
    known = [o for a in command._actions for o in a.option_strings]
    for arg in argv[position + 1:]:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or name in known:
            continue
        if any(o.startswith(name) for o in known):  # an abbreviation: argparse takes it or names the ambiguity
            continue
        close = difflib.get_close_matches(name, known, n=1)
        command.error(f"unrecognized option {name}" + (f" (did you mean {close[0]}?)" if close else ""))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # other libraries: warnings only
    logging.getLogger("vglaw").setLevel(logging.INFO)  # vglaw's own progress lines
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    _check_options(parser, argv)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except VglawError as e:
        # what the user can fix (a file, config, checkpoint, image, a missing extra): one line;
        # anything else is a bug and keeps its traceback
        if os.environ.get("VGLAW_DEBUG"):
            raise
        print(f"vglaw {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: one line (with what was kept, where the command knows), no traceback
        if os.environ.get("VGLAW_DEBUG"):
            raise
        print(f"vglaw {args.command}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
