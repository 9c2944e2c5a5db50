"""The one argparse parser of pyvpnkit's command lines: a mistake is one line.

argparse prints the whole usage before an error and leaves the offending
value out of a type error ("argument --ifname: ..."). Every pyvpnkit command
line (`pyvpnkit`, `pyvpnkit-vpnkit`) parses with OneLineParser instead, so a
bad value reads `pyvpnkit exec: --ifname 'x': why (see --help)` and the exit
status is the documented one. slirp4netns's and gvproxy's drop-ins keep their
originals' wording and have parsers of their own.
"""

from __future__ import annotations

import argparse
from typing import Any, ClassVar, NoReturn

from pyvpnkit.errors import USAGE


class OneLineParser(argparse.ArgumentParser):
    exit_status: ClassVar[int] = USAGE

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:
        """A type error names the option and the value it was given."""
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError as exc:
            option = action.option_strings[-1] if action.option_strings else action.dest
            reason = exc.message.removeprefix(f"{option} ")
            if repr(arg_string) in reason:
                raise argparse.ArgumentError(None, f"{option}: {reason}") from None
            raise argparse.ArgumentError(None, f"{option} {arg_string!r}: {reason}") from None

    def error(self, message: str) -> NoReturn:
        self.exit(self.exit_status, f"{self.prog}: {message} (see --help)\n")
