"""The ``fastopt`` command (also ``python -m fastopt``): ``fastopt bench`` and ``fastopt info``.

Installed as a console script (``[project.scripts]`` in pyproject.toml). Unlike ``python -m
fastopt``, the script does not put the current directory on ``sys.path``, so it runs the installed
package even at the root of a source checkout.
"""
import os
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
    """Run a ``fastopt`` command; returns the exit status.

    A reader that closes the output early (``fastopt info | head -1``) ends any command quietly,
    with status 1 (what Python itself exits with on a broken pipe), instead of a traceback.
    """
    try:
        try:
            return _run(argv, prog)
        finally:
            # Output to a pipe is buffered: flush here, where a closed pipe can still be handled,
            # rather than at interpreter exit, which would print "Exception ignored ...".
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return 1


def _discard_stdout():
    """Point stdout at the null device, so that flushing what is left at exit raises nothing
    (the recipe in the documentation of Python's ``signal`` module)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):   # stdout is not a file (replaced, or closed)
        pass


def _run(argv, prog):
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
