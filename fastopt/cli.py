"""The ``fastopt`` command (also ``python -m fastopt``): ``fastopt bench`` and ``fastopt info``.

Installed as a console script (``[project.scripts]`` in pyproject.toml). Unlike ``python -m
fastopt``, the script does not put the current directory on ``sys.path``, so it runs the installed
package even at the root of a source checkout.
"""
import sys

COMMANDS = {
    "bench": "fastopt vs torch.optim, in-place NumPy and this machine's memory-traffic bound",
    "info": "how the installed fastopt was built (fastopt.build_info())",
}


def _usage(prog):
    lines = [f"usage: {prog} <command> [options]", "", "commands:"]
    lines += [f"  {name:<7} {text}" for name, text in COMMANDS.items()]
    lines += ["", f"{prog} <command> --help shows a command's options; {prog} --version the version."]
    return "\n".join(lines) + "\n"


def info():
    """Print :func:`fastopt.build_info`, one ``key: value`` a line."""
    import fastopt
    print(f"fastopt {fastopt.__version__}")
    for key, value in fastopt.build_info().items():
        print(f"{key}: {value}")
    return 0


def main(argv=None, prog="fastopt"):
    """Run a ``fastopt`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "--version":
        import fastopt
        print(f"fastopt {fastopt.__version__}")
        return 0
    if command == "bench":
        from .benchmarks.cli import main as bench_main
        return bench_main(rest, prog=f"{prog} bench")
    if command == "info":
        if rest:
            print(f"{prog} info: takes no arguments, got {' '.join(rest)}", file=sys.stderr)
            return 2
        return info()
    print(f"{prog}: unknown command {command!r}\n\n{_usage(prog)}", file=sys.stderr, end="")
    return 2
