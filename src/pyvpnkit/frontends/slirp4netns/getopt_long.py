"""glibc getopt_long's scanning, as slirp4netns parses its command line.

Not argparse: importing it (and the modules it pulls in) costs a launcher more
than slirp4netns takes to make its TAP (bench/startup.py). The rules are
getopt_long's, which scripts rely on: options anywhere among the operands
(it permutes), `--` ends them, `--name=value` and `--name value`, a long
name may be shortened to any unique prefix, short options cluster (`-c6`)
and take their value attached or as the next word (`-m1500`, `-m 1500`).
Errors carry glibc's wording.
"""

from __future__ import annotations


class GetoptError(Exception):
    """A command line getopt_long refuses; the message is glibc's."""


class Option:
    """One option: a short letter (or ""), a long name, whether it takes a value."""

    __slots__ = ("short", "long", "has_arg")

    def __init__(self, short: str, long: str, has_arg: bool) -> None:
        self.short = short
        self.long = long
        self.has_arg = has_arg


def getopt_long(argv: list[str], options: list[Option]
                ) -> tuple[list[tuple[Option, str | None]], list[str]]:
    """The options found, in order, with their values; the operands, in order."""
    found: list[tuple[Option, str | None]] = []
    operands: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            operands.extend(argv[i:])
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            opt = _long(name, options)
            if not opt.has_arg:
                if eq:
                    raise GetoptError(f"option '--{opt.long}' doesn't allow an argument")
                found.append((opt, None))
                continue
            if not eq:
                if i == len(argv):
                    raise GetoptError(f"option '--{opt.long}' requires an argument")
                value = argv[i]
                i += 1
            found.append((opt, value))
        elif word.startswith("-") and word != "-":
            i = _cluster(word, argv, i, options, found)
        else:
            operands.append(word)
    return found, operands


def _long(name: str, options: list[Option]) -> Option:
    """The option NAME names exactly, else the only one it begins."""
    for opt in options:
        if opt.long == name:
            return opt
    matches = [opt for opt in options if opt.long.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise GetoptError(f"unrecognized option '--{name}'")
    names = " ".join(f"'--{opt.long}'" for opt in matches)
    raise GetoptError(f"option '--{name}' is ambiguous; possibilities: {names}")


def _cluster(word: str, argv: list[str], i: int, options: list[Option],
             found: list[tuple[Option, str | None]]) -> int:
    """Short options in WORD (`-c6`, `-m1500`); returns where scanning goes on."""
    for k in range(1, len(word)):
        letter = word[k]
        opt = next((o for o in options if o.short == letter), None)
        if opt is None:
            raise GetoptError(f"invalid option -- '{letter}'")
        if not opt.has_arg:
            found.append((opt, None))
            continue
        if k + 1 < len(word):
            found.append((opt, word[k + 1:]))
        elif i < len(argv):
            found.append((opt, argv[i]))
            i += 1
        else:
            raise GetoptError(f"option requires an argument -- '{letter}'")
        break
    return i
