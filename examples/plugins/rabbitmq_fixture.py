#!/usr/bin/env python3
"""Fixture for `kv-rotator plugin test` against the RabbitMQ plugin (rabbitmq.py).

Python standard library only. One JSON request on stdin, one JSON reply on stdout
(docs/plugins.md, "Testing a plugin"):

- {"op": "admin", "settings": {...}}: creates a fresh user tagged `administrator` and
  replies {"admin": {"username": "...", "password": "..."}};
- {"op": "create-user", "password": "...", "settings": {...}}: creates a new user with that
  password and replies {"username": "..."}. It is tagged `administrator` too: the checks
  include a user changing its own password without an admin, which RabbitMQ allows only
  to administrators.

Arguments (`--fixture-arg`, visible to `ps`, so no secret in them):

    rabbitmq_fixture.py LOGIN_FILE [PREFIX]

LOGIN_FILE holds one line, `username:password`, of an administrator of the **test** server
(the fixture creates users with it; keep the file readable by you only). The users it
creates are named PREFIX (default `kvr_fixture_`) plus random hex; it deletes none of
them: remove them when the run is over (`rabbitmqctl list_users`, `delete_user`).

It reaches the management API through the profile's settings, with rabbitmq.py's own
client (https and `ca_file` included).
"""

import json
import os
import secrets
import sys

sys.dont_write_bytecode = True  # nothing left beside the plugin
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rabbitmq  # noqa: E402 -- the plugin beside this file


def create(s, login, name, password):
    body = {
        "password_hash": rabbitmq.password_hash(password),
        "hashing_algorithm": rabbitmq.HASHING,
        "tags": "administrator",
    }
    status, parsed = rabbitmq.Http(s).request("PUT", rabbitmq.user_path(s, name), login, body)
    if status != 201:
        sys.exit("creating user %s: HTTP %d %s" % (name, status, rabbitmq.reason(parsed)))


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: rabbitmq_fixture.py LOGIN_FILE [PREFIX]")
    with open(sys.argv[1], encoding="utf-8") as f:
        login = tuple(f.readline().rstrip("\n").split(":", 1))
    if len(login) != 2:
        sys.exit("%s: expected one line username:password" % sys.argv[1])
    prefix = sys.argv[2] if len(sys.argv) == 3 else "kvr_fixture_"
    req = json.loads(sys.stdin.read())
    if req.get("fixture") != 1:
        sys.exit("this fixture speaks fixture protocol 1")
    try:
        s = rabbitmq.Settings(req.get("settings") or {}, 0)
        name = prefix + secrets.token_hex(6)
        if req["op"] == "admin":
            password = secrets.token_urlsafe(24)
            create(s, login, name + "_admin", password)
            print(json.dumps({"admin": {"username": name + "_admin", "password": password}}))
        elif req["op"] == "create-user":
            create(s, login, name, req["password"])
            print(json.dumps({"username": name}))
        else:
            sys.exit("unknown op %r" % req["op"])
    except (rabbitmq.Failure, rabbitmq.SentError) as e:
        sys.exit("management API: %s" % e)


if __name__ == "__main__":
    main()
