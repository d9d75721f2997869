"""Signed commands from the platform: setpoint writes and remote configuration, verified,
authorised, executed once, answered with a signed result and audited.

``wire`` (the command and result formats), ``policy`` (keys, scopes, checks; pure),
``state`` (commands.db: seen ids and results across restarts), ``service`` (the
pipeline from a broker message to a sealed result), ``config_push`` (validate, reload,
watch, roll back).
"""

from .service import Downlink
from .wire import Command, CommandError, decode_command, encode_command, sign_command

__all__ = [
    "Command",
    "CommandError",
    "Downlink",
    "decode_command",
    "encode_command",
    "sign_command",
]
