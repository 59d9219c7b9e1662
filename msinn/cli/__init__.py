"""The ``msinn`` command: encode, decode, info, convert, train, eval (one module per sub-command)."""

from __future__ import annotations

import sys


def _usage() -> str:
    return (
        "usage: msinn {encode,decode,info,convert,train,eval} ...\n"
        "  encode IN OUT [--bpp B | --psnr P | --bytes N | --qp Q] [--codecs msinn,avif] [--effort N]\n"
        "               [--model NAME_OR_PATH] [--device cpu|cuda]\n"
        "  decode IN OUT\n"
        "  info IN\n"
        "  convert MODEL OUT --calibration DIR   (float model -> portable profile)\n"
        "  train --data DIR_OR_URI --out DIR [...]\n"
        "  eval DIR [--model NAME_OR_PATH] [--json OUT] [--plot OUT.png] [--codecs jpeg,webp,avif] [--choice ...]\n"
        "run 'msinn COMMAND --help' for the options of one command"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ("encode", "decode", "info"):
        from . import codec

        return codec.main(cmd, rest)
    if cmd == "convert":
        from . import convert

        return convert.main(rest)
    if cmd == "train":
        from . import train

        return train.main(rest)
    if cmd == "eval":
        from . import eval

        return eval.main(rest)
    print(f"msinn: unknown command {cmd!r}\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
