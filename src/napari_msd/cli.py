"""The ``napari-msd`` command: headless access to the same core the napari docks use.

Subcommands import what they need lazily, so ``napari-msd info`` never loads Qt.
Every user error ends the program with one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _cmd_info(args: argparse.Namespace) -> None:
    from .io import ModelFileError, read_metadata

    try:
        metadata = read_metadata(args.model)
    except ModelFileError as err:
        raise CLIError(str(err)) from None
    json.dump(metadata.to_dict(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _cmd_demo(args: argparse.Namespace) -> None:
    try:
        from ._widgets.demo import run_demo
    except ImportError as err:
        raise CLIError(
            f"the napari GUI is not installed ({err}); install it with: pip install 'napari-msd[all]'"
        ) from None
    run_demo(screenshot=args.screenshot)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="napari-msd",
        description="Train MS-D networks and U-Nets from sparse labels, and apply them to large volumes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="print a model file's metadata as JSON")
    info.add_argument("model", help="a model file written by napari-msd")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser("demo", help="open napari with sample EM data and the napari-msd docks")
    demo.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window to PNG and exit")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-msd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except CLIError as err:
        print(f"napari-msd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-msd {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
