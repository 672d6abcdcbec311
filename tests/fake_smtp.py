"""A real SMTP server on 127.0.0.1 for tests of email (aiosmtpd in a thread of its own).

It keeps every message it accepted (``messages``: the envelope and the parsed message) and every
recipient it was asked to take (``rcpt_attempts``). It can refuse recipients on purpose
(``refuse``: a 5xx or 4xx reply to ``RCPT TO``), demand a login it never grants
(``refuse_logins``: 535 to every ``AUTH``), and be stopped and started again on the same port, as
a mail server that goes down and comes back.

    with LocalSMTP() as smtp:
        settings.EMAIL_HOST, settings.EMAIL_PORT = smtp.host, smtp.port
        ...
        smtp.stop()   # connections are refused
        smtp.start()  # the same port again
"""

from __future__ import annotations

import email
import socket
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import default

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Handler:
    def __init__(self, smtp: LocalSMTP):
        self.smtp = smtp

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.smtp._lock:
            self.smtp.rcpt_attempts.append(address)
            reply = self.smtp._refused.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content, policy=default)
        with self.smtp._lock:
            self.smtp.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class LocalSMTP:
    def __init__(self):
        self.host = "127.0.0.1"
        self.port = free_port()  # kept across stop() and start()
        self.messages: list[Received] = []
        self.rcpt_attempts: list[str] = []
        self._refused: dict[str, str] = {}  # address -> reply
        self._refuse_logins = False
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    def start(self) -> LocalSMTP:
        """Listen on ``port`` (a controller's event loop ends with it, so each start makes one)."""
        controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            authenticator=self._authenticate,
            auth_require_tls=False,  # a login over plain 127.0.0.1, as a test may try one
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> LocalSMTP:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def refuse(self, address: str, reply: str = "550 5.1.1 No such user here") -> None:
        """Answer ``RCPT TO:<address>`` with ``reply`` from now on (a 5xx or a 4xx)."""
        with self._lock:
            self._refused[address.lower()] = reply

    def accept_all(self) -> None:
        with self._lock:
            self._refused.clear()

    def refuse_logins(self) -> None:
        """Every ``AUTH`` gets 535, whatever the credentials."""
        with self._lock:
            self._refuse_logins = True

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        with self._lock:
            return AuthResult(success=not self._refuse_logins, handled=False)

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.messages)
