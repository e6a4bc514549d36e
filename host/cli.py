"""The ``microtrain`` command line.

This is the application layer: the only module of ``host`` allowed to import ``device_model``
(for benchmarks of the datapath and, later, ``microtrain serve``).
"""

from __future__ import annotations

import argparse
import json
import os
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
    if args.what == "step":
        from host import bench_step

        records = bench_step.run(quick=args.quick, progress=not args.json)
        if args.json:
            print(json.dumps(records, indent=2))
        else:
            print(bench_step.format_table(records))
        return 0
    print(f"microtrain bench: '{args.what}' is not available yet", file=sys.stderr)
    return 2


def _cmd_info(args: argparse.Namespace) -> int:
    import host
    from host import errors

    try:
        with host.open(args.device, baudrate=args.baud, timeout=args.timeout) as dev:
            info = dev.info()
    except errors.MicrotrainError as e:
        print(f"microtrain info: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    limits = info["limits"]
    rows = [
        ("device", args.device),
        ("protocol", f"{info['protocol']} (schema {info['schema_hash']})"),
        ("firmware", info["firmware"]),
        ("preset", info["preset"]),
        ("algorithms", ", ".join(info["algorithms"])),
        ("formats", ", ".join(info["formats"])),
        ("features", ", ".join(info["features"])),
        ("link", f"max payload {limits['link_max_payload']} B, window {limits['link_window']}"),
    ]
    device_limits = [k for k in host.device.DEVICE_LIMITS if k in limits]
    if device_limits:
        rows.append(("limits", ", ".join(f"{k} {limits[k]}" for k in device_limits)))
    rows += [
        (f"  {k}", f"{v:g}" if k not in limits else str(limits[k]))
        for k, v in info["parameters"].items()
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from host import cli_serve

    try:
        opts = cli_serve.options(
            preset=args.preset,
            pty=args.pty,
            tcp=args.tcp,
            baud=args.baud,
            seed=args.seed,
            key_file=args.key_file,
            faults=args.faults,
            fault_direction=args.fault_direction,
        )
        return cli_serve.serve(opts)
    except cli_serve.ServeError as e:
        print(f"microtrain serve: {e}", file=sys.stderr)
        return 2


def _cmd_demo(args: argparse.Namespace) -> int:
    from host import demo

    return demo.main(args)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from device_model import study_costs
    from host import studies

    return studies.main(args, "reproduce", cost_model=study_costs)


def _cmd_scenario(args: argparse.Namespace) -> int:
    from host import studies

    return studies.main(args, "scenario")


def _cmd_federate(args: argparse.Namespace) -> int:
    import importlib

    federated = importlib.import_module("host.federated")
    rc: int = federated.main(args)
    return rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="microtrain",
        description="Host runtime and emulated on-device DNN training chip.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("bench", help="benchmarks, printed as ratios against same-run baselines")
    b.add_argument("what", choices=["gemm", "link", "step"], help="which benchmark")
    b.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    b.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes")
    b.set_defaults(func=_cmd_bench)

    i = sub.add_parser("info", help="what a device reports: protocol, preset, formats, limits")
    i.add_argument("--device", default="emu://hnpu-v2", help="device URL (default emu://hnpu-v2)")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.add_argument("--baud", type=int, default=None, help="baud rate of a serial device")
    i.add_argument("--timeout", type=float, default=None, help="seconds to wait for answers")
    i.set_defaults(func=_cmd_info)

    s = sub.add_parser("serve", help="the emulated device behind a pty or a TCP port")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a new pty; prints PTY <path>")
    where.add_argument("--tcp", metavar="HOST:PORT", help="serve on a loopback TCP port")
    s.add_argument("--preset", default="hnpu-v2", help="chip preset (default hnpu-v2)")
    s.add_argument("--baud", type=int, default=None, help="pace bytes like a UART of this rate")
    s.add_argument("--seed", type=int, default=None, help="pin the link's random epochs")
    s.add_argument("--key-file", default=None, help="file holding the auth key as hex text")
    s.add_argument(
        "--faults",
        default=None,
        metavar="OPTIONS",
        help="seeded line faults as emu://'s, e.g. 'corrupt=1e-4&drop=0.01&fault_seed=1'",
    )
    s.add_argument(
        "--fault-direction",
        default=None,
        help="which bytes the faults hit: both (default), to-device or to-host",
    )
    s.set_defaults(func=_cmd_serve)

    d = sub.add_parser("demo", help="the main job: on-device adaptation after a camera fault")
    from host.demo import add_arguments

    add_arguments(d)
    d.set_defaults(func=_cmd_demo)

    from host import studies

    r = sub.add_parser("reproduce", help="design-space studies of the survey (JSON + PNG)")
    studies.add_arguments(r, "reproduce")
    r.set_defaults(func=_cmd_reproduce)
    sc = sub.add_parser("scenario", help="on-device scenarios: new-classes, distill")
    studies.add_arguments(sc, "scenario")
    sc.set_defaults(func=_cmd_scenario)

    f = sub.add_parser("federate", help="federated learning across emulated or real chips (flwr)")
    f.add_argument("--clients", type=int, default=8, help="number of clients (default 8)")
    f.add_argument("--rounds", type=int, default=10, help="federated rounds (default 10)")
    f.add_argument(
        "--device",
        action="append",
        default=None,
        metavar="URL",
        help="device URL of a client (repeat; clients beyond those given use emu://hnpu-v2)",
    )
    f.add_argument(
        "--partition", default="dirichlet:0.5", help="iid or dirichlet:ALPHA (default 0.5)"
    )
    f.add_argument("--seed", type=int, default=0, help="seed of partitions, training and SR")
    f.add_argument("--json-out", default=None, metavar="FILE", help="write the rounds as JSON")
    f.add_argument("--plot", default=None, metavar="FILE", help="write a PNG of the curve")
    from host.federated import add_arguments as add_federate_arguments

    add_federate_arguments(f)
    f.set_defaults(func=_cmd_federate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except BrokenPipeError:
        # the reader went away (`microtrain info | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
