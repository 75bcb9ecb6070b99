"""Latency histogram PNG of an ``--exportTimes`` file (ours or trtexec's).

    .venv/bin/python benchmarks/plot_latency.py times.json latency.png [--bins 50]
"""

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("times", help="JSON written by `changenet-trt bench --exportTimes` or trtexec --exportTimes")
    parser.add_argument("png", help="PNG to write")
    parser.add_argument("--bins", type=int, default=50, help="histogram bins (default: 50)")
    args = parser.parse_args()
    from changenet_trt.errors import ChangeNetError
    from changenet_trt.tools.bench_report import latency_histogram

    try:
        print("wrote {}".format(latency_histogram(args.times, args.png, bins=args.bins)))
    except ChangeNetError as exc:
        print("error: {}".format(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
