#!/usr/bin/env python3
"""record.py: a TCP tap between a PostgreSQL client and a server that writes
down every protocol message of both directions, for the reply tracker's
unit test (tests/unit/test_reply.c replays them; tests/transcripts/README.md
says how they were made).

Usage: record.py --upstream HOST:PORT --out FILE --title TEXT -- COMMAND [ARGS...]

It listens on a free loopback port, runs COMMAND with PGHOST and PGPORT
pointing at it (and PGSSLMODE=disable: the tap answers an SSLRequest 'N'),
relays every connection COMMAND makes to the upstream server, and once
COMMAND has exited writes FILE: a comment header, then one line per
message after the login (from the first ReadyForQuery on), in the order the
tap saw them:

    CONN DIR TYPE HEX  [# what it is]

CONN numbers the connections from 1, DIR is F (client to server) or B
(server to client), TYPE the message type (one character), HEX the body
("-" when empty). Everything after '#' is a comment. The login itself
(startup packet, authentication) is left out but for the startup
parameters, named in a comment. Exits with COMMAND's status.
"""
import argparse
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading


def describe(direction, mtype, body):
    """A short readable note for the messages a reader looks for."""
    def cstr(b):
        return b.split(b"\0", 1)[0].decode("utf-8", "replace")
    try:
        if direction == "F" and mtype == "Q":
            return "query " + cstr(body)
        if direction == "F" and mtype == "P":
            name, rest = body.split(b"\0", 1)
            return "parse %r %s" % (name.decode(), cstr(rest))
        if direction == "F" and mtype == "B":
            portal, rest = body.split(b"\0", 1)
            return "bind %r %r" % (portal.decode(), cstr(rest))
        if direction == "F" and mtype in "DC":
            return "%s %s %r" % ("describe" if mtype == "D" else "close", chr(body[0]), cstr(body[1:]))
        if direction == "F" and mtype == "E":
            return "execute %r" % cstr(body)
        if direction == "F" and mtype == "S":
            return "sync"
        if direction == "F" and mtype == "H":
            return "flush"
        if direction == "B" and mtype == "C":
            return "complete " + cstr(body)
        if direction == "B" and mtype == "Z":
            return "ready " + chr(body[0])
        if direction == "B" and mtype in "EN":
            fields = {}
            for part in body.split(b"\0"):
                if part:
                    fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
            return "%s %s %s" % ("error" if mtype == "E" else "notice", fields.get("C", "?"), fields.get("M", ""))
    except (ValueError, IndexError):
        pass
    return ""


class Connection:
    def __init__(self, number, client, upstream, lines, lock):
        self.number = number
        self.client = client
        self.upstream = upstream
        self.lines = lines
        self.lock = lock
        self.logged_in = False
        self.startup_done = False
        self.buffers = {"F": b"", "B": b""}

    def note(self, direction, mtype, body):
        if not self.logged_in:
            if direction == "B" and mtype == "Z":
                self.logged_in = True
            return
        text = describe(direction, mtype, body)
        line = "%d %s %s %s" % (self.number, direction, mtype, body.hex() if body else "-")
        if text:
            line += "  # " + text.replace("\n", " ")[:160]
        with self.lock:
            self.lines.append(line)

    def frame(self, direction, data):
        """Split what passed in one direction into messages."""
        buf = self.buffers[direction] + data
        while True:
            if direction == "F" and not self.startup_done:
                if len(buf) < 8:
                    break
                (length,) = struct.unpack("!I", buf[:4])
                if len(buf) < length:
                    break
                packet, buf = buf[:length], buf[length:]
                (code,) = struct.unpack("!I", packet[4:8])
                if code >> 16 == 3:
                    self.startup_done = True
                    params = packet[8:].split(b"\0")
                    pairs = ["%s=%s" % (params[i].decode(), params[i + 1].decode())
                             for i in range(0, len(params) - 1, 2) if params[i]]
                    with self.lock:
                        self.lines.append("# connection %d: %s" % (self.number, " ".join(pairs)))
                continue
            if len(buf) < 5:
                break
            mtype = chr(buf[0])
            (length,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + length:
                break
            body, buf = buf[5:1 + length], buf[1 + length:]
            self.note(direction, mtype, body)
        self.buffers[direction] = buf

    def run(self):
        # An SSLRequest (or GSSENCRequest) first: answer 'N' ourselves.
        while True:
            head = self.client.recv(8, socket.MSG_PEEK)
            if len(head) < 8:
                break
            (length, code) = struct.unpack("!II", head)
            if length == 8 and code in (80877103, 80877104):
                self.client.recv(8)
                self.client.sendall(b"N")
                continue
            break
        sel = selectors.DefaultSelector()
        sel.register(self.client, selectors.EVENT_READ, ("F", self.upstream))
        sel.register(self.upstream, selectors.EVENT_READ, ("B", self.client))
        open_sides = 2
        while open_sides == 2:
            for key, _ in sel.select():
                direction, peer = key.data
                data = key.fileobj.recv(65536)
                if not data:
                    open_sides -= 1
                    break
                self.frame(direction, data)
                peer.sendall(data)
        self.client.close()
        self.upstream.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    host, port = args.upstream.rsplit(":", 1)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    lines, lock, threads = [], threading.Lock(), []

    def accept():
        number = 0
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            number += 1
            upstream = socket.create_connection((host, int(port)))
            conn = Connection(number, client, upstream, lines, lock)
            t = threading.Thread(target=conn.run, daemon=True)
            t.start()
            threads.append(t)

    threading.Thread(target=accept, daemon=True).start()
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(listener.getsockname()[1]), PGSSLMODE="disable")
    status = subprocess.call(command, env=env)
    for t in threads:
        t.join(timeout=10)
    listener.close()
    with open(args.out, "w") as f:
        f.write("# %s\n" % args.title)
        f.write("# recorded by tests/transcripts/record.py (%s); lines: CONN DIR TYPE HEX, see there\n"
                % os.path.basename(command[0]))
        for line in lines:
            f.write(line + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
