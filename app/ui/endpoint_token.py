"""Where the remote endpoint's token is kept: the OS keyring (Windows Credential Locker, macOS
Keychain, Secret Service) when there is one, else Delineo's settings file, with a warning the
settings dialog shows."""

from __future__ import annotations

import logging

from PySide6.QtCore import QSettings

log = logging.getLogger(__name__)

SERVICE = "Delineo remote endpoint"
KEY = "remote/token"
PLAIN_TEXT_WARNING = (
    "No OS keyring on this computer: the token is stored in Delineo's settings file in plain text. "
    "Anyone who can read your files can read it."
)


def _keyring():
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
    except Exception:  # a broken keyring is no keyring
        log.warning("OS keyring unavailable", exc_info=True)
        return None
    return None if isinstance(backend, fail.Keyring) else keyring


def keyring_available() -> bool:
    return _keyring() is not None


def load_token(settings: QSettings, url: str) -> str:
    kr = _keyring()
    if kr is not None and url:
        try:
            token = kr.get_password(SERVICE, url)
            if token:
                return token
        except Exception:
            log.warning("could not read the token from the OS keyring", exc_info=True)
    return str(settings.value(KEY, "") or "")


def save_token(settings: QSettings, url: str, token: str) -> str | None:
    """Store the token; returns a warning to show when it went to the settings file."""
    kr = _keyring()
    if kr is not None and url:
        try:
            if token:
                kr.set_password(SERVICE, url, token)
            else:
                kr.delete_password(SERVICE, url)
            settings.remove(KEY)
            return None
        except Exception:  # fall back to the settings file, with the warning
            log.warning("could not store the token in the OS keyring", exc_info=True)
    if token:
        settings.setValue(KEY, token)
        return PLAIN_TEXT_WARNING
    settings.remove(KEY)
    return None
