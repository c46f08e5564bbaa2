"""``python -m fastopt <command>``: ``bench`` (the benchmark table) or ``info`` (build info)."""
import sys

USAGE = """usage: python -m fastopt <command> [options]

commands:
  bench   fastopt vs torch.optim, in-place NumPy and the C ceiling (python -m fastopt bench --help)
  info    print fastopt.build_info()
"""


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "bench":
        from .bench import main as bench_main
        return bench_main(rest)
    if cmd == "info":
        import fastopt
        for key, value in fastopt.build_info().items():
            print(f"{key}: {value}")
        return 0
    print(f"python -m fastopt: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
