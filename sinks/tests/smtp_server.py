"""A real SMTP server (aiosmtpd) for the email sink's tests.

Records every accepted message as one JSON line in --out, with whether the session was
encrypted and authenticated. --fail-first N answers 451 (try again) to the first N messages;
--reject-containing TEXT answers 550 to messages whose content contains TEXT. Prints "ready"
once it accepts connections and runs until its standard input closes.
"""

import argparse
import json
import ssl
import sys
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Recorder:
    def __init__(self, out, fail_first, reject_containing):
        self.out = out
        self.fail_left = fail_first
        self.reject_containing = reject_containing

    async def handle_DATA(self, server, session, envelope):
        content = envelope.content.decode("utf-8", "replace")
        if self.reject_containing and self.reject_containing in content:
            return "550 5.7.1 message refused by policy"
        if self.fail_left > 0:
            self.fail_left -= 1
            return "451 4.3.0 temporarily unable to accept, try again"
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "content": content,
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "authenticated": bool(session.authenticated),
        }
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return "250 2.0.0 accepted"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["plain", "starttls", "tls"], default="plain")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--reject-containing")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    context = None
    if args.mode != "plain":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == (args.user or "").encode()
            and auth_data.password == (args.password or "").encode()
        )
        return AuthResult(success=ok)

    options = {}
    if args.mode == "starttls":
        options.update(tls_context=context, require_starttls=True)
    elif args.mode == "tls":
        options.update(ssl_context=context)
    if args.user:
        options.update(authenticator=authenticator, auth_required=True,
                       auth_require_tls=args.mode == "starttls")
    handler = Recorder(args.out, args.fail_first, args.reject_containing)
    controller = Controller(handler, hostname="127.0.0.1", port=args.port,
                            server_hostname="localhost", **options)
    controller.start()
    print("ready", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
