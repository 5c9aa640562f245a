#!/usr/bin/env python3
"""Fixture for `kv-rotator plugin test` against the toy-file plugins (toy_file.py, toy_file.sh).

Python standard library only. One JSON request on stdin, one JSON reply on stdout
(docs/plugins.md, "Testing a plugin"):

- {"op": "admin", "settings": {...}}: writes a fresh `root` login into the toy file
  (settings.path) and replies {"admin": {"username": "root", "password": "..."}};
- {"op": "create-user", "password": "...", "settings": {...}}: adds a new user with that
  password and replies {"username": "..."}.

A fixture creates test users on a test target: point it at a scratch file, never at a
file real consumers use.
"""
import fcntl
import hashlib
import json
import secrets
import sys


def digest(password):
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def main():
    req = json.loads(sys.stdin.read())
    if req.get("fixture") != 1:
        sys.exit("this fixture speaks fixture protocol 1")
    path = req["settings"]["path"]
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(path, "a+", encoding="utf-8") as f:
            f.seek(0)
            lines = [line for line in f if line.split() and line.split()[0] != "root"] \
                if req["op"] == "admin" else None
        if req["op"] == "admin":
            password = secrets.token_urlsafe(24)
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(lines + ["root %s\n" % digest(password)])
            print(json.dumps({"admin": {"username": "root", "password": password}}))
        elif req["op"] == "create-user":
            user = "user-" + secrets.token_hex(6)
            with open(path, "a", encoding="utf-8") as f:
                f.write("%s %s\n" % (user, digest(req["password"])))
            print(json.dumps({"username": user}))
        else:
            sys.exit("unknown op %r" % req["op"])


if __name__ == "__main__":
    main()
