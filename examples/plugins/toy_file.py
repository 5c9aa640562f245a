#!/usr/bin/env python3
"""kv-rotator exec plugin (protocol 1): a toy target kept in a text file.

Python standard library only. The file (settings.path) has one line per user:

    <user> <sha256-hex> [<sha256-hex> ...]

A login works when the password's SHA-256 is on the user's line. The admin login is
checked against its own line. Strategies: single-user (a change replaces the user's
hashes) and multi-password (a change adds one; retire removes the others).

Secrets arrive on stdin only; this program writes none to stdout, stderr or argv, and
leaves no file behind but the target file itself (rewritten atomically, under a lock).
See docs/plugins.md for the protocol.
"""
import fcntl
import hashlib
import json
import os
import sys
import tempfile

PROTOCOL = 1


def reply(**fields):
    fields["protocol"] = PROTOCOL
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
    sys.exit(0)


def error(cls, message):
    reply(outcome="error", error={"class": cls, "message": message})


def digest(password):
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def load(path):
    users = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                users[parts[0]] = parts[1:]
    return users


def save(path, users):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".toy-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for user, hashes in users.items():
                f.write(" ".join([user] + hashes) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def works(users, user, password):
    return bool(password) and digest(password) in users.get(user, [])


def set_password(req, users):
    user, pending = req["username"], req["pending"]
    if user not in users:
        error("permanent", "no user %r in the file" % user)
    if not req.get("pending_is_new") and works(users, user, pending):
        reply(outcome="already-set", verified=True)
    how = None
    if works(users, user, req["current"]):
        how = "current"
    elif any(works(users, user, p) for p in req.get("previous", [])):
        how = "previous"
    else:
        admin = req.get("admin")
        if admin and admin["username"] != user and works(users, admin["username"], admin["password"]):
            how = "admin"
    if how is None:
        error("permanent", "no known login of %r works (current, %d previous, admin %s)"
              % (user, len(req.get("previous", [])), "given" if req.get("admin") else "none"))
    if req["strategy"] == "multi-password":
        if digest(pending) not in users[user]:
            users[user].append(digest(pending))
    else:
        users[user] = [digest(pending)]
    return how


def main():
    req = json.loads(sys.stdin.read())
    if req.get("protocol") != PROTOCOL:
        error("permanent", "this plugin speaks protocol 1")
    op = req["operation"]
    if op == "describe":
        reply(outcome="described", strategies=["single-user", "multi-password"],
              password={"min_length": 12, "max_length": 256})
    path = req["settings"].get("path")
    if not path:
        error("permanent", "settings.path is required")
    try:
        lock = open(path + ".lock", "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        users = load(path)
    except OSError as e:
        error("transient", "cannot read %s: %s" % (path, e.strerror))
    if op == "verify":
        reply(outcome="accepted" if works(users, req["username"], req["password"]) else "rejected")
    if op == "set":
        how = set_password(req, users)
        save(path, users)
        # Read back: what verify would check.
        ok = works(load(path), req["username"], req["pending"])
        reply(outcome="changed", changed_with=how, verified=ok)
    if op == "retire":
        user = req["username"]
        if not works(users, user, req["keep"]):
            error("permanent", "the password to keep does not log in as %r: nothing removed" % user)
        kept = {digest(p) for p in [req["keep"]] + req.get("also_keep", [])}
        before = users[user]
        users[user] = [h for h in before if h in kept]
        save(path, users)
        reply(outcome="retired", removed=len(before) - len(users[user]))
    error("permanent", "unknown operation %r" % op)


if __name__ == "__main__":
    main()
