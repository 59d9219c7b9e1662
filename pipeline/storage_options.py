"""Storage options (``--storage-options``) and the secrets they may not carry inline.

A command line is not a safe place for a credential: Ray keeps every job's
entrypoint. Options given inline are checked for anything secret-looking
(``secret_path``), and options are printed only redacted (``redact``).
"""

from __future__ import annotations

import argparse
import json
import os
import re

# Words of option names that hold credentials, in the spellings fsspec back ends use (s3fs, gcsfs, adlfs, http).
SECRET_WORDS = {"secret", "key", "keys", "apikey", "token", "tokens", "password", "passwd", "pwd", "passphrase",
                "credential", "credentials", "auth", "authorization", "sas", "sig", "cookie", "cookies"}
SECRET_NAMES = ("connectionstring",)  # names that are secret only as a whole
# Values that carry a credential whatever their option's name: a SAS or presigned query, a connection string,
# user:password@ in a URL, an HTTP authorisation scheme.
SECRET_VALUES = re.compile(
    r"([?&](sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential)=)"
    r"|(accountkey=|sharedaccesssignature=|sharedaccesskey=|password=|pwd=)"
    r"|(^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@)"
    r"|(^(bearer|basic|token|sharedkey|aws4-hmac-sha256)\s)",
    re.IGNORECASE,
)


def options_arg(value: str) -> dict:
    """``--storage-options``: ``@FILE`` (a JSON file, the safe way to pass secrets) or inline JSON.

    A command line is not a safe place for a secret: Ray keeps every job's
    entrypoint (``ray list jobs``, the dashboard). Inline options that hold
    anything secret-looking are refused with a pointer to ``@FILE``.
    """
    if value.startswith("@"):
        path = os.path.expanduser(value[1:])
        try:
            with open(path, encoding="utf-8") as f:
                opts = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read storage options from {path}: {exc}") from None
    else:
        try:
            opts = json.loads(value)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"storage options are not JSON ({exc})") from None
        where = secret_path(opts)
        if where is not None:
            raise argparse.ArgumentTypeError(
                f"storage option {where} looks like a credential: secrets on the command line end up in Ray's job "
                "table and the shell history: put the options in a file and pass --storage-options @FILE, or use "
                "the storage's environment (AWS_* variables, ~/.aws, an instance profile)"
            )
    if not isinstance(opts, dict):
        raise argparse.ArgumentTypeError("storage options must be a JSON object")
    return opts


def _secret_name(name: object) -> bool:
    """``aws_secret_access_key``, ``accountKey``, ``headers.Authorization``, ``sas_token``: yes; ``region_name``,
    ``signature_version``: no."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower()
    words = set(re.findall(r"[a-z0-9]+", text))
    return bool(words & SECRET_WORDS) or any(n in re.sub(r"[^a-z0-9]", "", text) for n in SECRET_NAMES)


def secret_path(options: object, path: str = "") -> str | None:
    """Where in (nested) options a credential seems to be, as ``a.b[2]``, or None.

    Any non-empty value (a string, a number, a list, an object) under a
    credential-like name counts, and so does any string shaped like a
    credential (a SAS or presigned query, ``user:pass@`` in a URL, a
    connection string, an ``Authorization`` scheme) under any name.
    """
    if isinstance(options, dict):
        for k, v in options.items():
            here = f"{path}.{k}" if path else str(k)
            if _secret_name(k) and v not in (None, "", [], {}, False):
                return here
            found = secret_path(v, here)
            if found:
                return found
    elif isinstance(options, list | tuple):
        for i, v in enumerate(options):
            found = secret_path(v, f"{path}[{i}]")
            if found:
                return found
    elif isinstance(options, str) and SECRET_VALUES.search(options.strip()):
        return path or "(value)"
    return None


def redact(options: object) -> object:
    """Storage options safe to print: every value under a credential-like name, or shaped like one, replaced."""
    if isinstance(options, dict):
        return {k: "***" if _secret_name(k) else redact(v) for k, v in options.items()}
    if isinstance(options, list | tuple):
        return [redact(v) for v in options]
    if isinstance(options, str) and SECRET_VALUES.search(options.strip()):
        return "***"
    return options if options is not None else {}
