"""Model versions of a running service: ``python -m clients models list | load | promote | rollback | unload``.

A thin client of the service's model repository routes (service.repository), which need an API key with the
``admin`` scope (``--api-key`` or ``$FASHION_API_KEY``). Each command prints the service's JSON answer; a refusal
(a load that failed its checksums, parity or accuracy gate) prints the reason and exits 1.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx

ACTIONS = ("list", "load", "promote", "rollback", "unload")


def add_parser(commands: Any) -> None:
    """The ``models`` subcommand and its arguments, on the CLI's subparsers."""
    models = commands.add_parser("models", help="list, load, promote, roll back or unload model versions "
                                                "(needs an admin API key)")
    models.add_argument("action", choices=ACTIONS)
    models.add_argument("model", nargs="?", default=None,
                        help="the backend (v2 model name), e.g. onnx-torch; every one for list")
    models.add_argument("--source", default=None,
                        help="load: a store tag (name:version), a version, or an exported model folder on the "
                             "server (default: the store's latest)")
    models.add_argument("--version", default=None, help="promote: the version to serve; unload: the version to "
                                                        "unload (default: every one but the serving one)")
    models.add_argument("--no-promote", action="store_true", help="load: keep it beside the serving version")
    models.add_argument("--accuracy-margin", type=float, default=None,
                        help="load: the accuracy gate's margin for this load (default: the service's)")


def request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """The method, path and JSON body of ``args``' action."""
    if args.action == "list":
        # One model: its versions with their lineage; all: every loaded version (Triton's repository index).
        return ("GET", f"/v2/models/{args.model}", None) if args.model else ("POST", "/v2/repository/index", None)
    if args.model is None:
        raise ValueError(f"{args.action} needs the model (backend) name")
    parameters: dict[str, Any] = {}
    if args.action == "load":
        parameters = {"source": args.source, "promote": not args.no_promote, "accuracy_margin": args.accuracy_margin}
    elif args.action in ("promote", "unload"):
        parameters = {"version": args.version}
    if args.action == "promote" and args.version is None:
        raise ValueError("promote needs --version")
    body = {"parameters": {name: value for name, value in parameters.items() if value is not None}}
    return "POST", f"/v2/repository/models/{args.model}/{args.action}", body


def run(args: argparse.Namespace) -> int:
    """Send the action; print the answer. 0 when the service did it, 1 when it refused."""
    try:
        method, path, body = request(args)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    reply = httpx.request(method, f"{args.url.rstrip('/')}{path}", json=body, headers=headers, timeout=args.timeout)
    print(json.dumps(reply.json(), indent=2) if reply.content else reply.status_code)
    return 0 if reply.is_success else 1
