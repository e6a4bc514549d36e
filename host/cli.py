"""The ``microtrain`` command line.

This is the application layer: the only module of ``host`` allowed to import ``device_model``
(for benchmarks of the datapath and, later, ``microtrain serve``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "gemm":
        from device_model import bench_gemm

        records = bench_gemm.run(quick=args.quick, progress=not args.json)
        if args.json:
            print(json.dumps(records, indent=2))
        else:
            print(bench_gemm.format_table(records))
        return 0
    if args.what == "link":
        from host import bench_link

        result = bench_link.run(quick=args.quick, progress=not args.json)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(bench_link.format_table(result))
        return 0
    print(f"microtrain bench: '{args.what}' is not available yet", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="microtrain",
        description="Host runtime and emulated on-device DNN training chip.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("bench", help="benchmarks, printed as ratios against same-run baselines")
    b.add_argument("what", choices=["gemm", "link"], help="which benchmark")
    b.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    b.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
