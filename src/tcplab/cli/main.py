"""``tcplab``: the entry point. Parses the command line, runs one command, and
maps every error to an exit status and a one-line hint (httpie's habit).

Exit status: one enum, ``tcplab.errors.ExitStatus``; the ``--help`` epilog
lists it (generated below) and so does the README's table.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tcplab import __version__, interrupts
from tcplab.errors import DoctorStatus, ExitStatus, TcplabError

#: command name -> module in tcplab.cli; each has ``add_parser`` and ``run``.
#: Only the module of the command being run is imported (``tcplab states``
#: must start about as fast as ss; see bench/states_vs_ss.py), so the
#: one-line help of the others lives here.
COMMANDS = {
    "server": "run an echo server (models: uvloop, asyncio, epoll, threads; leak mode)",
    "client": "send messages to an echo server and print the echoes, or measure round trips",
    "experiment": "run the lab's experiments (echo; 'all' runs every one)",
    "bomb": "the port bomb: short-lived connections until the ports run out",
    "multiplex": "C10k: many concurrent connections, and what the server needed",
    "states": "count TCP sockets per state (netstat | grep | wc -l, done right)",
    "sockets": "list TCP sockets with timers and owning processes (ss -tanpo)",
    "fds": "fds in use against the limit per process, and what they are (lsof, ulimit -n)",
    "limits": "show the fd limits and TCP sysctls behind the experiments",
    "trace": "live TCP state transitions from tracefs (or --poll)",
    "capture": "capture the packets of a port on lo (tcpdump -i lo), write pcap",
    "doctor": "diagnose CLOSE_WAIT leaks, fd and port exhaustion, full accept queues",
    "exporter": "serve socket, fd and doctor metrics to Prometheus",
    "live": "the TCP state machine of a port, live in a browser (for a projector)",
    "explain": "a lesson, with recorded figures ('tcplab explain' lists the topics)",
    "net": "a client and a server in namespaces, a shaped link between them",
    "check": "say what works on this machine and how to fix what does not",
}

EPILOG = """\
commands in the order of the lab:
  tcplab server                 an echo server (four models, leak mode)
  tcplab client hello           send a message, print its echo
  tcplab bomb --port 8080       the port bomb: connect() until EADDRNOTAVAIL
  tcplab multiplex --connections 10000   C10k: one thread, one epoll, 10,000 sockets
  tcplab experiment all         run every experiment and summarise what it showed
  tcplab states --port 8080     sockets per TCP state (netstat | grep | wc -l)
  tcplab sockets --port 8080    one row per socket, timers and owners (ss -tanpo)
  tcplab fds PID                fds in use against the limit, and what they are
  tcplab limits                 the kernel knobs behind the experiments
  tcplab trace --port 8080      live state transitions from the kernel's tracepoint
  tcplab capture --port 8080    the packets on lo, tcpdump's way, with the lab's words
  tcplab doctor                 what is wrong: CLOSE_WAIT leaks, fd or port exhaustion
  tcplab exporter               the same facts for Prometheus (127.0.0.1:9309/metrics)
  tcplab live --port 8080       the state machine moving, in a browser (127.0.0.1:9310)
  tcplab explain time-wait      a lesson, with the figures of a recorded run
  tcplab net up lab --delay 50  two hosts in namespaces, 100 ms apart (net exec, show, down)
  tcplab check                  what works on this machine, and the fix for what does not

exit status:
""" + "".join(f"  {int(s):<4}{s.meaning}\n" for s in ExitStatus) + """\
  tcplab doctor alone follows the monitoring-plugin convention:
""" + "  " + ", ".join(f"{int(s)} {s.name.lower()}" for s in DoctorStatus) + """
Add --debug before the command to see a traceback on errors.
"""


def command_of(argv: list[str] | None) -> str | None:
    """The command word of a command line (the first argument not an option)."""
    return next((a for a in (sys.argv[1:] if argv is None else argv)
                 if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; fully built only for the command named in ``argv``."""
    chosen = command_of(argv)
    parser = argparse.ArgumentParser(
        prog="tcplab",
        description="tcplab makes the Linux TCP stack visible: real sockets, real kernel "
        "numbers, the classic failures (TIME_WAIT port exhaustion, fd leaks, C10k) "
        "reproduced and measured.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tcplab {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback when something fails"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if name == chosen:
            importlib.import_module(f"tcplab.cli.{name}").add_parser(sub, name)
        elif chosen not in COMMANDS:
            # Only top-level help and errors list the other commands.
            sub.add_parser(name, help=summary)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args``, except that a word the command does not know is
    reported by the command's own parser (``usage: tcplab states ...``).

    argparse's subparsers collect the words they do not know and hand them
    back to the top-level parser, which then prints *its* usage for
    ``tcplab states --bogus`` (argparse.py, ``_SubParsersAction.__call__``
    and ``parse_args``): correct, and useless to the user.
    """
    args, extras = parser.parse_known_args(argv)
    if extras:
        message = f"unrecognized arguments: {' '.join(extras)}"
        chosen = command_of(argv)
        for action in parser._actions:
            # An unknown word before the command word is the top-level parser's.
            if (isinstance(action, argparse._SubParsersAction) and chosen is not None
                    and chosen in action.choices
                    and argv.index(extras[0]) > argv.index(chosen)):
                action.choices[chosen].error(message)
        parser.error(message)
    return args


def main(argv: list[str] | None = None) -> int:
    from tcplab.cli.output import note, setup_streams

    setup_streams()
    if not sys.platform.startswith("linux"):
        note(f"tcplab: tcplab needs Linux (this is {sys.platform}): it reads the Linux "
             "kernel's socket tables and /proc")
        return ExitStatus.NOT_SUPPORTED
    parser = build_parser(argv)
    try:
        args = parse(parser, sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        # doctor follows the monitoring-plugin convention: usage errors are
        # "unknown" (3), not argparse's 2, which would read as "critical".
        if command_of(argv) == "doctor" and exc.code == 2:
            return DoctorStatus.UNKNOWN
        raise
    if args.command is None:
        parser.print_help()
        return ExitStatus.USAGE
    debug = bool(args.debug)
    # The first Ctrl-C raises KeyboardInterrupt, later ones are ignored, so the
    # cleanup it starts runs to its end (tcplab/interrupts.py).
    restore_sigint = interrupts.install()
    try:
        return int(args.func(args) or 0)
    except TcplabError as exc:
        if debug:
            __import__("traceback").print_exc()
        note(f"tcplab: {exc.message}")
        if exc.hint:
            note(f"hint: {exc.hint}")
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            __import__("traceback").print_exc()
        note("tcplab: interrupted")
        if argv is None:
            interrupts.exit_now(ExitStatus.INTERRUPTED)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error of ours.
        sys.stderr.close()
        return ExitStatus.OK
    except Exception as exc:  # a bug: say so in one line unless --debug
        if debug:
            __import__("traceback").print_exc()
        else:
            note(f"tcplab: internal error: {type(exc).__name__}: {exc}")
            note("hint: run again with --debug for the traceback, and report it")
        return ExitStatus.ERROR
    finally:
        if argv is None:  # the process ends now: a late Ctrl-C must not turn a
            interrupts.ignore()  # finished run into a traceback
        else:
            restore_sigint()  # called in-process (tests)
