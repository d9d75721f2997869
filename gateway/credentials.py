"""The MQTT password: from a file only the service can read, an environment variable, or
a systemd credential. Never from the config itself (it is world-readable).

Read at every connect, so a changed password is picked up without a restart.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import UplinkConfig


class CredentialError(Exception):
    """The configured password cannot be read; the message says which source and what to do."""


def password_source(up: UplinkConfig) -> str:
    """Where the password comes from, for messages (never the password itself)."""
    if up.password_file is not None:
        return f"uplink.password_file ({up.password_file})"
    if up.password_env is not None:
        return f"environment variable {up.password_env} (uplink.password_env)"
    if up.password_credential is not None:
        return f"systemd credential {up.password_credential!r} (uplink.password_credential)"
    return "no password configured"


def read_password(up: UplinkConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The password, or None when none is configured (a user name alone, e.g. a token)."""
    env = os.environ if env is None else env
    if up.password_file is not None:
        return _read_file(up.password_file, "uplink.password_file")
    if up.password_env is not None:
        value = env.get(up.password_env)
        if value is None:
            raise CredentialError(
                f"uplink.password_env: environment variable {up.password_env} is not set "
                "(systemd: Environment= or EnvironmentFile= in a drop-in of edgegw.service)"
            )
        return value
    if up.password_credential is not None:
        folder = env.get("CREDENTIALS_DIRECTORY")
        if not folder:
            raise CredentialError(
                f"uplink.password_credential: no systemd credentials are passed to this "
                f"process (CREDENTIALS_DIRECTORY is unset): add "
                f"LoadCredential={up.password_credential}:/etc/edgegw/mqtt-password "
                "(or LoadCredentialEncrypted=) to the unit"
            )
        return _read_file(Path(folder) / up.password_credential, "uplink.password_credential")
    return None


def _read_file(path: Path, field: str) -> str:
    try:
        st = path.stat()
        if stat.S_IMODE(st.st_mode) & 0o004:
            raise CredentialError(
                f"{field}: {path} is readable by everyone (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 {path} (or 640 with group "
                "edgegw), and change the password on the broker: treat it as exposed"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialError(f"{field}: {path} does not exist") from None
    except PermissionError:
        raise CredentialError(
            f"{field}: {path} is not readable by this user: chown edgegw {path}; chmod 600 {path}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"{field}: cannot read {path}: {exc}") from None
    # one line; an editor's trailing newline is not part of the password
    return text.removesuffix("\n").removesuffix("\r")
