"""The user-facing error tier.

``ParsimError`` is raised for anything a user can cause (bad input, a plan that
cannot be built); its message is one line naming the value and what was expected.
The CLI prints it without a traceback and exits 2. Internal invariants use assert.
"""


class ParsimError(Exception):
    """Bad input or an infeasible request; the message is shown to the user as is."""


def require(cond: bool, message: str) -> None:
    """Raise ParsimError(message) unless cond holds."""
    if not cond:
        raise ParsimError(message)


def closest(name: str, choices, n: int = 3) -> str:
    """'; did you mean a, b?' suffix for an unknown name, or '' when nothing is close."""
    import difflib
    hits = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.4)
    return f"; did you mean {', '.join(hits)}?" if hits else ""


def run_main(main, prog: str) -> int:
    """Run a script's ``main()`` as the CLI runs a command: a ParsimError becomes one line on stderr
    ("<prog>: error: ...") and exit code 2, Ctrl-C one line and 130; anything else is a bug and keeps its traceback.
    For ``if __name__ == "__main__": raise SystemExit(run_main(main, "python -m studies.x"))``."""
    import sys
    try:
        return int(main() or 0)
    except ParsimError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
