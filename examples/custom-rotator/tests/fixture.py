#!/usr/bin/env python3
"""Fixture for `kv-rotator plugin test` against a legacy-users file (its path is the one
argument): writes the same salted SHA-256 entries the rotator does. One JSON request on
stdin, one reply on stdout (docs/plugins.md, "Testing a plugin").
"""
import hashlib
import json
import os
import secrets
import sys


def entry(password, admin):
    salt = secrets.token_hex(16)
    digest = hashlib.sha256((salt + password).encode("utf-8")).hexdigest()
    return {"salt": salt, "sha256": digest, "admin": admin}


def main():
    path = sys.argv[1]
    req = json.loads(sys.stdin.read())
    with open(path, encoding="utf-8") as f:
        users = json.load(f)
    if req["op"] == "admin":
        password = secrets.token_urlsafe(24)
        users["users"]["fixture-admin"] = entry(password, True)
        reply = {"admin": {"username": "fixture-admin", "password": password}}
    elif req["op"] == "create-user":
        user = "report-" + secrets.token_hex(6)
        users["users"][user] = entry(req["password"], False)
        reply = {"username": user}
    else:
        sys.exit("unknown op %r" % req["op"])
    tmp = path + ".fixture-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(users, f)
    os.replace(tmp, path)
    print(json.dumps(reply))


if __name__ == "__main__":
    main()
