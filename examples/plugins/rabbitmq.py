#!/usr/bin/env python3
"""kv-rotator exec plugin (protocol 1): RabbitMQ users (internal database), single-user.

Python 3.8+, standard library only. See docs/plugins.md, "A real target: RabbitMQ".

- describe: protocol 1, strategy single-user (RabbitMQ keeps one password hash per
  user, so there is no multi-password), passwords of 12 to 256 characters whose only
  symbols are URI-unreserved (`-_.~`: an amqp:// URI carries them unescaped).
- verify: an AMQP 0-9-1 login with PLAIN (socket + struct): protocol header,
  Connection.Start, Connection.StartOk; Connection.Tune means the password works,
  Connection.Close 403 ACCESS_REFUSED (or the server closing the socket) means it does
  not, anything else is a transient error. An empty password is never sent.
- set: the management HTTP API (the rabbitmq_management plugin). The login that
  changes is the user's own (current, then each previous: it must be tagged
  `administrator` to change anything, which the API says apart from a wrong password),
  then the request's admin. It reads the user first (GET /api/users/{name}): a user that
  does not exist is a permanent error, never created. Then PUT /api/users/{name} with
  `password_hash` (base64 of a 4-byte random salt + SHA-256(salt + password)) and
  `hashing_algorithm: rabbit_password_hashing_sha256`, never the clear password, and
  the user's own `tags` (and `limits`) as read, since PUT replaces them. Permissions
  are kept by the server. The name is percent-encoded whole (`/`, `.`, `%` included),
  so no name reaches another endpoint or another user.

Settings (the profile's `settings` table; unknown keys are refused):

    management_url   default "http://127.0.0.1:15672" (https: verified with ca_file)
    amqp_host        default: management_url's host
    amqp_port        default 5672, or 5671 with amqp_tls
    amqp_tls         default false: AMQP over TLS, verified with ca_file
    ca_file          PEM file of the CA(s) to trust for https and amqps (default: the
                     system's)
    timeout_secs     one network step's limit, default 10 (the run's deadline is
                     honoured too)

Secrets arrive on stdin only; this program writes none to stdout, stderr, argv, the
environment or a file.
"""

import base64
import hashlib
import ipaddress
import http.client
import json
import os
import socket
import ssl
import struct
import sys
import time
import urllib.parse

PROTOCOL = 1
HASHING = "rabbit_password_hashing_sha256"
SETTINGS = {"management_url", "amqp_host", "amqp_port", "amqp_tls", "ca_file", "timeout_secs"}
# Left for the reply before the worker kills the process group at the deadline.
DEADLINE_MARGIN_SECS = 1.0
# Larger AMQP frames than this before Connection.Tune are not a RabbitMQ server's.
MAX_HANDSHAKE_FRAME = 128 * 1024
MAX_HTTP_BODY = 1024 * 1024


class Failure(Exception):
    """An error reply: class (transient, not-yet-visible, refused, permanent) and message."""

    def __init__(self, cls, message):
        super().__init__(message)
        self.cls = cls
        self.message = message


def reply(**fields):
    fields["protocol"] = PROTOCOL
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
    sys.exit(0)


def shown(name):
    """A user name from an untrusted tag, safe to put in a message: escaped, clipped."""
    text = ascii(name)
    return text if len(text) <= 80 else text[:77] + "...'"


def is_loopback(host):
    """`localhost` or a loopback IP address (never a name a resolver could answer for)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings:
    def __init__(self, raw, deadline_unix_ms):
        unknown = sorted(set(raw) - SETTINGS)
        if unknown:
            raise Failure(
                "permanent", "unknown setting(s) %s; known: %s" % (", ".join(unknown), ", ".join(sorted(SETTINGS)))
            )
        url = raw.get("management_url", "http://127.0.0.1:15672")
        if not isinstance(url, str):
            raise Failure("permanent", "settings.management_url must be a string")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Failure("permanent", "settings.management_url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
            raise Failure("permanent", "settings.management_url must have no login, query or fragment")
        self.https = parts.scheme == "https"
        self.http_host = parts.hostname
        try:
            self.http_port = parts.port or (443 if self.https else 80)
        except ValueError:
            raise Failure("permanent", "settings.management_url has an invalid port")
        self.prefix = parts.path.rstrip("/")
        self.amqp_tls = raw.get("amqp_tls", False)
        if not isinstance(self.amqp_tls, bool):
            raise Failure("permanent", "settings.amqp_tls must be true or false")
        self.amqp_host = raw.get("amqp_host", self.http_host)
        self.amqp_port = raw.get("amqp_port", 5671 if self.amqp_tls else 5672)
        if not isinstance(self.amqp_host, str) or not self.amqp_host:
            raise Failure("permanent", "settings.amqp_host must be a host name")
        if not isinstance(self.amqp_port, int) or isinstance(self.amqp_port, bool) or not 0 < self.amqp_port < 65536:
            raise Failure("permanent", "settings.amqp_port must be a port number")
        # Passwords cross these connections (PLAIN, HTTP basic auth): in clear only to this host.
        for scheme_is_tls, host, what in (
            (self.https, self.http_host, "management_url must be https://"),
            (self.amqp_tls, self.amqp_host, "amqp_tls must be true"),
        ):
            if not scheme_is_tls and not is_loopback(host):
                raise Failure(
                    "permanent",
                    "settings.%s for %s: passwords are sent in clear only to a loopback host" % (what, host),
                )
        self.ca_file = raw.get("ca_file")
        if self.ca_file is not None and not isinstance(self.ca_file, str):
            raise Failure("permanent", "settings.ca_file must be a path")
        step = raw.get("timeout_secs", 10)
        if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
            raise Failure("permanent", "settings.timeout_secs must be a positive number")
        self.step_secs = float(step)
        self.end = deadline_unix_ms / 1000.0 - DEADLINE_MARGIN_SECS if deadline_unix_ms else None
        self._tls = None

    def timeout(self, what):
        """Seconds the next network step may take, or a transient error when none is left."""
        if self.end is None:
            return self.step_secs
        left = self.end - time.time()
        if left <= 0:
            raise Failure("transient", "out of time before %s (the run's deadline)" % what)
        return min(self.step_secs, left)

    def tls(self):
        if self._tls is None:
            try:
                self._tls = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as e:
                raise Failure("permanent", "settings.ca_file %r: %s" % (self.ca_file, e.strerror or e))
        return self._tls


# --- AMQP 0-9-1: just enough of the handshake to prove a login ----------------------------

FRAME_METHOD, FRAME_HEARTBEAT, FRAME_END = 1, 8, 0xCE
START, START_OK, SECURE, TUNE, CLOSE = (10, 10), (10, 11), (10, 20), (10, 30), (10, 50)
ACCESS_REFUSED = 403


class Closed(Exception):
    """The server closed the connection."""


def shortstr(b):
    return struct.pack(">B", len(b)) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


def table(fields):
    """An AMQP field table of (name, value): str, bool or nested list of pairs."""
    out = b""
    for name, value in fields:
        out += shortstr(name.encode())
        if isinstance(value, bool):
            out += b"t" + struct.pack(">B", int(value))
        elif isinstance(value, str):
            out += b"S" + longstr(value.encode())
        else:
            out += b"F" + table(value)
    return longstr(out)


# AMQP 0-9-1's frame-min-size: the largest frame a peer must accept before Connection.Tune.
MIN_FRAME_MAX = 4096


def method_frame(method, args):
    payload = struct.pack(">HH", *method) + args
    return struct.pack(">BHI", FRAME_METHOD, 0, len(payload)) + payload + bytes([FRAME_END])


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise Closed()
        data += chunk
    return data


def read_method(sock, where):
    """The next method frame on channel 0: ((class, method), arguments)."""
    while True:
        header = read_exact(sock, 7)
        if header[:4] == b"AMQP":
            raise Failure(
                "transient", "%s does not speak AMQP 0-9-1 (it answered with its own protocol header)" % where
            )
        kind, channel, size = struct.unpack(">BHI", header)
        if size > MAX_HANDSHAKE_FRAME:
            raise Failure("transient", "%s sent a %d-byte frame during the handshake" % (where, size))
        body = read_exact(sock, size + 1)
        if body[-1] != FRAME_END:
            raise Failure("transient", "%s sent a malformed frame" % where)
        if kind == FRAME_HEARTBEAT:
            continue
        if kind != FRAME_METHOD or channel != 0 or size < 4:
            raise Failure("transient", "%s sent an unexpected frame (type %d, channel %d)" % (where, kind, channel))
        return struct.unpack(">HH", body[:4]), body[4:-1]


def parse_start(args, where):
    """The mechanisms a Connection.Start offers."""
    try:
        pos = 2  # version-major, version-minor
        (props_len,) = struct.unpack_from(">I", args, pos)
        pos += 4 + props_len
        (mech_len,) = struct.unpack_from(">I", args, pos)
        mechanisms = args[pos + 4 : pos + 4 + mech_len]
    except struct.error:
        raise Failure("transient", "%s sent a malformed Connection.Start" % where)
    return mechanisms.split()


def parse_close(args):
    try:
        (code,) = struct.unpack_from(">H", args, 0)
        text = args[3 : 3 + args[2]].decode("utf-8", "replace")
    except (struct.error, IndexError):
        return 0, ""
    return code, text


def amqp_login(s, user, password):
    """True: the server accepts this login; False: it refuses it. Failure: it could not tell."""
    if not password:
        return False  # never sent: RabbitMQ refuses empty passwords, and so would this check
    where = "AMQP %s:%d" % (s.amqp_host, s.amqp_port)
    login_sent = False
    try:
        sock = socket.create_connection((s.amqp_host, s.amqp_port), timeout=s.timeout("connecting to " + where))
    except OSError as e:
        raise Failure("transient", "cannot connect to %s: %s" % (where, e.strerror or e))
    try:
        if s.amqp_tls:
            try:
                sock = s.tls().wrap_socket(sock, server_hostname=s.amqp_host)
            except ssl.SSLCertVerificationError as e:
                raise Failure("permanent", "%s: TLS certificate not trusted: %s" % (where, e.verify_message))
        sock.settimeout(s.timeout("the AMQP handshake"))
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        try:
            method, args = read_method(sock, where)
        except Closed:
            raise Failure("transient", "%s closed the connection before Connection.Start" % where)
        if method != START:
            raise Failure("transient", "%s: expected Connection.Start, got method %d.%d" % ((where,) + method))
        if b"PLAIN" not in parse_start(args, where):
            raise Failure("permanent", "%s does not offer the PLAIN mechanism" % where)
        client = [
            ("product", "kv-rotator rabbitmq plugin"),
            # Without it the server closes the socket on a refused login instead of saying 403.
            ("capabilities", [("authentication_failure_close", True)]),
        ]
        response = b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8")
        frame = method_frame(START_OK, table(client) + shortstr(b"PLAIN") + longstr(response) + shortstr(b"en_US"))
        del response
        if len(frame) > MIN_FRAME_MAX:
            # Before Connection.Tune a peer accepts frames of 4096 bytes only (the server
            # drops the connection): no AMQP client can log in with this name and password.
            return False
        sock.sendall(frame)
        del frame
        login_sent = True
        try:
            method, args = read_method(sock, where)
        except Closed:
            # authentication_failure_close was asked for: a refusal comes as Close 403.
            # A bare close is a node restart or a proxy dropping the backend, not a "no".
            raise Failure("transient", "%s closed the connection after the login without an answer" % where)
        if method == TUNE:
            return True
        if method == CLOSE:
            code, text = parse_close(args)
            if code == ACCESS_REFUSED:
                return False
            raise Failure("transient", "%s closed the login with %d %s" % (where, code, text[:200]))
        if method == SECURE:
            raise Failure("transient", "%s asked for a SASL challenge, which PLAIN does not have" % where)
        raise Failure("transient", "%s: expected Connection.Tune or Close, got method %d.%d" % ((where,) + method))
    except socket.timeout:
        raise Failure("transient", "%s: no answer within the step's timeout" % where)
    except (ConnectionResetError, ssl.SSLEOFError) as e:
        # Even after the login: a refusal comes as Close 403 (authentication_failure_close).
        raise Failure("transient", "%s: %s" % (where, getattr(e, "strerror", None) or e))
    except ssl.SSLError as e:
        raise Failure("transient", "%s: TLS: %s" % (where, e.reason or e))
    except OSError as e:
        raise Failure("transient", "%s: %s" % (where, e.strerror or e))
    finally:
        sock.close()


# --- The management HTTP API ---------------------------------------------------------------

# Only these characters of a name stay as they are in the path; everything else (`/`,
# `.`, `%`, non-ASCII) is percent-encoded, so `..`, `a/b` or `%2F` stay one segment
# naming one user.
UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")


def user_path(s, user):
    encoded = "".join(chr(b) if b in UNRESERVED else "%%%02X" % b for b in user.encode("utf-8"))
    return s.prefix + "/api/users/" + encoded


class Http:
    """One request to the management API. An error before the request is sent is a
    transient Failure (nothing changed); one after it is a SentError, which the caller
    classes (a GET changed nothing, a PUT may have)."""

    def __init__(self, s):
        self.s = s
        self.where = "management API %s:%d" % (s.http_host, s.http_port)

    def request(self, method, path, login, body=None):
        s = self.s
        timeout = s.timeout("calling the " + self.where)
        if s.https:
            conn = http.client.HTTPSConnection(s.http_host, s.http_port, timeout=timeout, context=s.tls())
        else:
            conn = http.client.HTTPConnection(s.http_host, s.http_port, timeout=timeout)
        try:
            try:
                conn.connect()
            except ssl.SSLCertVerificationError as e:
                raise Failure("permanent", "%s: TLS certificate not trusted: %s" % (self.where, e.verify_message))
            except OSError as e:
                raise Failure("transient", "cannot connect to the %s: %s" % (self.where, e.strerror or e))
            token = base64.b64encode(("%s:%s" % login).encode("utf-8")).decode("ascii")
            headers = {"Authorization": "Basic " + token, "Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode("utf-8")
                headers["Content-Type"] = "application/json"
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read(MAX_HTTP_BODY)
            except (OSError, http.client.HTTPException) as e:
                raise SentError("%s %s: %s" % (method, self.where, getattr(e, "strerror", None) or type(e).__name__))
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            return resp.status, parsed
        finally:
            conn.close()


class SentError(Exception):
    """The request was sent (perhaps only in part) and no answer came."""


def reason(parsed):
    return str(parsed.get("reason", "")) if isinstance(parsed, dict) else ""


def read_user(api, user, login, who):
    """(user object, None, True) when `login` may read (and so change) the user;
    (None, why, logged_in) when it cannot, `logged_in` saying whether the password was
    right (a user without the administrator tag); Failure when the user does not exist
    or the API fails."""
    try:
        status, parsed = api.request("GET", user_path(api.s, user), login)
    except SentError as e:
        raise Failure("transient", "reading the user: %s" % e)  # a GET changes nothing
    if status == 200 and isinstance(parsed, dict):
        return parsed, None, True
    if status == 401:
        why = reason(parsed)
        if why == "Login failed":
            return None, "%s: login refused" % who, False
        return (
            None,
            "%s logs in but may not change users (%s; RabbitMQ needs the administrator tag)" % (who, why or "401"),
            True,
        )
    if status == 404:
        raise Failure(
            "permanent",
            "no user %s on the %s: this plugin changes users, it never creates them" % (shown(user), api.where),
        )
    if status >= 500:
        raise Failure("transient", "%s: GET user: HTTP %d %s" % (api.where, status, reason(parsed)))
    raise Failure("permanent", "%s: GET user as %s: HTTP %d %s" % (api.where, who, status, reason(parsed)))


def password_hash(password):
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def write_user(api, user, login, who, existing, pending):
    path = user_path(api.s, user)
    if "tags" not in existing:
        # A PUT without them would strip the user's tags.
        raise Failure("permanent", "%s: GET user answered without the user's tags: nothing changed" % api.where)
    tags = existing.get("tags")
    if isinstance(tags, list):
        tags = ",".join(str(t) for t in tags)
    body = {"password_hash": password_hash(pending), "hashing_algorithm": HASHING, "tags": tags}
    limits = existing.get("limits")
    if isinstance(limits, dict) and limits:
        body["limits"] = limits
    try:
        status, parsed = api.request("PUT", path, login, body)
    except SentError as e:
        raise Failure("not-yet-visible", "changing the password: %s (the change may have been made)" % e)
    if status == 204:
        # RabbitMQ has no conditional PUT: an administrator's change to the tags or limits
        # between the read and this write is overwritten (docs/plugins.md says so).
        return
    if status == 201:
        # Deleted between the read and the write: PUT made a new account, which this
        # plugin never does. Take it back out; until that is certain, the account exists
        # with the pending password.
        try:
            undone, _ = api.request("DELETE", path, login)
        except SentError:
            undone = 0
        if undone in (204, 404):
            raise Failure(
                "permanent", "user %s was deleted while being changed; the account the change re-created was "
                "deleted again" % shown(user)
            )
        raise Failure(
            "not-yet-visible",
            "user %s was deleted while being changed, and the account the change re-created (with the new "
            "password) could NOT be deleted: remove it by hand" % shown(user),
        )
    if status >= 500:
        raise Failure(
            "not-yet-visible",
            "%s: PUT user: HTTP %d %s (the change may have been made)" % (api.where, status, reason(parsed)),
        )
    raise Failure("permanent", "%s: PUT user as %s refused: HTTP %d %s" % (api.where, who, status, reason(parsed)))


# --- Operations ----------------------------------------------------------------------------


def check_name(name, what):
    if not isinstance(name, str) or not name:
        raise Failure("permanent", "%s must be a non-empty string" % what)
    if "\0" in name:
        raise Failure("permanent", "%s %s contains NUL, which AMQP PLAIN cannot carry" % (what, shown(name)))


def set_password(s, req):
    if req.get("strategy") != "single-user":
        raise Failure(
            "permanent", "strategy %r: RabbitMQ keeps one password per user (single-user only)" % req.get("strategy")
        )
    user, pending = req["username"], req["pending"]
    check_name(user, "username")
    if not pending or "\0" in pending:
        raise Failure("permanent", "the pending password is empty or contains NUL")
    if not req.get("pending_is_new") and amqp_login(s, user, pending):
        reply(outcome="already-set", verified=True)

    api = Http(s)
    tried = []
    logins = []
    if req.get("current"):
        logins.append(("current", "user %s (current password)" % shown(user), req["current"]))
    for i, p in enumerate(req.get("previous") or []):
        if p:
            logins.append(("previous", "user %s (previous password #%d)" % (shown(user), i + 1), p))
    if ":" in user:
        # HTTP basic auth cannot carry a ':' in the user name.
        tried.append("the user's own logins (its name has ':', which HTTP basic auth cannot carry)")
        logins = []
    admin = req.get("admin")
    if admin:
        check_name(admin.get("username"), "admin.username")
        if ":" in admin["username"]:
            raise Failure(
                "permanent", "admin user name %s has ':', which HTTP basic auth cannot carry" % shown(admin["username"])
            )
    for how, who, password in logins:
        existing, why, logged_in = read_user(api, user, (user, password), who)
        if existing is None:
            tried.append(why)
            if logged_in:
                break  # the password is right, so none of the account's others can be
            continue
        write_user(api, user, (user, password), who, existing, pending)
        return how
    if admin and admin.get("password"):
        who = "admin %s" % shown(admin["username"])
        existing, why, _ = read_user(api, user, (admin["username"], admin["password"]), who)
        if existing is not None:
            write_user(api, user, (admin["username"], admin["password"]), who, existing, pending)
            return "admin"
        tried.append(why)
    else:
        tried.append("no admin login given")
    raise Failure(
        "permanent", "no known login could change user %s: %s" % (shown(user), "; ".join(tried) or "no password to try")
    )


def main():
    try:
        req = json.loads(sys.stdin.read())
    except ValueError:
        reply(outcome="error", error={"class": "permanent", "message": "the request is not JSON"})
    op = req.get("operation") if isinstance(req, dict) else None
    may_have_changed = False
    try:
        if req.get("protocol") != PROTOCOL:
            raise Failure("permanent", "this plugin speaks protocol 1")
        if op == "describe":
            reply(
                outcome="described",
                strategies=["single-user"],
                password={"min_length": 12, "max_length": 256, "symbols": "-_.~"},
            )
        settings = req.get("settings") or {}
        if not isinstance(settings, dict):
            raise Failure("permanent", "settings must be an object")
        s = Settings(settings, req.get("deadline_unix_ms") or 0)
        if op == "verify":
            check_name(req.get("username"), "username")
            if "\0" in (req.get("password") or ""):
                reply(outcome="rejected")
            ok = amqp_login(s, req["username"], req.get("password") or "")
            reply(outcome="accepted" if ok else "rejected")
        if op == "set":
            may_have_changed = True
            how = set_password(s, req)
            try:
                verified = amqp_login(s, req["username"], req["pending"])
            except Failure:
                verified = False
            reply(outcome="changed", changed_with=how, verified=verified)
        if op == "retire":
            raise Failure("permanent", "retire: RabbitMQ keeps one password per user (single-user only)")
        raise Failure("permanent", "unknown operation %r" % op)
    except Failure as f:
        reply(outcome="error", error={"class": f.cls, "message": f.message})
    except (KeyError, TypeError, AttributeError) as e:
        # A malformed request; nothing of it is quoted.
        cls = "not-yet-visible" if may_have_changed else "permanent"
        reply(outcome="error", error={"class": cls, "message": "malformed %s request (%s)" % (op, type(e).__name__)})
    except Exception as e:  # noqa: BLE001 -- always a reply, never a traceback with values in it
        cls = "not-yet-visible" if may_have_changed else "permanent"
        reply(outcome="error", error={"class": cls, "message": "%s failed: %s" % (op, type(e).__name__)})


if __name__ == "__main__":
    main()
