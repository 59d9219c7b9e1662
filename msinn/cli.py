"""The ``msinn`` command: encode, decode, info, convert, train, eval."""

from __future__ import annotations

import sys


def _usage() -> str:
    return (
        "usage: msinn {encode,decode,info,convert,train,eval} ...\n"
        "  encode IN OUT [--bpp B | --psnr P | --bytes N | --qp Q] [--model NAME_OR_PATH] [--device cpu|cuda]\n"
        "  decode IN OUT\n"
        "  info IN\n"
        "  convert MODEL OUT --calibration DIR   (float model -> portable profile)\n"
        "  train --data DIR_OR_URI --out DIR [...]\n"
        "  eval DIR [--model NAME_OR_PATH] [--json OUT] [--plot OUT.png] [--codecs jpeg,webp,avif]\n"
        "run 'msinn COMMAND --help' for the options of one command"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ("encode", "decode", "info"):
        from . import codec_cli

        return codec_cli.main(cmd, rest)
    if cmd == "convert":
        from . import convert_cli

        return convert_cli.main(rest)
    if cmd == "train":
        from . import train_cli

        return train_cli.main(rest)
    if cmd == "eval":
        from . import eval_cli

        return eval_cli.main(rest)
    print(f"msinn: unknown command {cmd!r}\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
