#!/usr/bin/env python3
"""make-seeds.py: writes the small seed corpora under tests/fuzz/corpus/ (one
directory per harness). The seeds are checked in; run this again only to
change them. Each seed is a valid or nearly valid input that leads the fuzzer
into the interesting part of its parser quickly."""
import base64
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def put(harness, name, data):
    d = os.path.join(CORPUS, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def startup_packet(code, pairs, terminated=True):
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs)
    if terminated:
        body += b"\0"
    return struct.pack(">II", 8 + len(body), code) + body


def msg(t, body):
    return t.encode() + struct.pack(">I", 4 + len(body)) + body


def cstr(s):
    return s.encode() + b"\0"


V3 = 3 << 16
put("startup", "psql", startup_packet(V3, [("user", "app"), ("database", "shop"), ("application_name", "psql"),
                                          ("client_encoding", "UTF8")]))
put("startup", "options", startup_packet(V3, [("user", "app"), ("options", "-c search_path=a\\ b --work-mem=4MB")]))
put("startup", "pq_option", startup_packet(V3 | 2, [("user", "app"), ("_pq_.compression", "on")]))
put("startup", "ssl_request", struct.pack(">II", 8, 80877103))
put("startup", "gss_request", struct.pack(">II", 8, 80877104))
put("startup", "cancel_request", struct.pack(">IIII", 16, 80877102, 1234, 5678))
put("startup", "no_terminator", startup_packet(V3, [("user", "app")], terminated=False))
put("startup", "duplicate", startup_packet(V3, [("user", "a"), ("user", "b")]))

# fuzz_scram: flags, uint16 length of client-first, client-first, client-final.
SERVER_NONCE = "fuzzservernonce0123456789"
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
CERT_HASH = bytes([0xfe, 0xed, 0xfa, 0xce] + list(range(1, 29)))


def scram(flags, gs2, final_binding=None, name="", nonce=CLIENT_NONCE, proof=None):
    first = f"{gs2}n={name},r={nonce}"
    binding = gs2.encode() + (final_binding or b"")
    final = f"c={base64.b64encode(binding).decode()},r={nonce}{SERVER_NONCE}"
    if proof is not None:
        final += ",p=" + proof
    return bytes([flags]) + struct.pack(">H", len(first)) + first.encode() + final.encode()


put("scram", "signed", scram(16, "n,,"))
put("scram", "signed_plus", scram(1 | 4 | 16, "p=tls-server-end-point,,", CERT_HASH))
put("scram", "y_flag", scram(4 | 16, "y,,"))
put("scram", "wrong_proof", scram(0, "n,,", proof=base64.b64encode(bytes(32)).decode()))
put("scram", "unknown_user", scram(8, "n,,", name="ghost", proof=base64.b64encode(bytes(32)).decode()))
put("scram", "escaped_name", scram(16, "n,,", name="x=2Cy=3D"))
put("scram", "authzid", scram(16, "n,a=authzid,"))
put("scram", "md5", bytes([32]) + struct.pack(">H", 0) + b"md5" + b"0" * 32)

# fuzz_messages: direction byte (even: frontend, odd: backend), then messages.
parse = msg("P", cstr("s1") + cstr("SELECT $1::int") + struct.pack(">hI", 1, 23))
bind = msg("B", cstr("") + cstr("s1") + struct.pack(">hh", 1, 0) + struct.pack(">hi", 1, 1) + b"7" +
           struct.pack(">hh", 1, 0))
describe = msg("D", b"S" + cstr("s1"))
execute = msg("E", cstr("") + struct.pack(">i", 0))
close = msg("C", b"S" + cstr("s1"))
sync = msg("S", b"")
put("messages", "extended", b"\0" + parse + bind + describe + execute + close + sync)
put("messages", "query", b"\0" + msg("Q", cstr("BEGIN; SET search_path = a; SELECT 1; COMMIT")))
put("messages", "copy", b"\0" + msg("Q", cstr("COPY t FROM STDIN")) + msg("d", b"1\n") + msg("c", b""))
put("messages", "unnamed", b"\0" + msg("P", cstr("") + cstr("SELECT 1") + struct.pack(">h", 0)) +
    msg("B", cstr("") + cstr("") + struct.pack(">hhh", 0, 0, 0)) + sync)
put("messages", "error", b"\1" + msg("E", b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0Dby admin\0\0"))
put("messages", "notice", b"\1" + msg("N", b"SNOTICE\0C00000\0Mhello\0Hhint\0\0") + msg("Z", b"I"))

# fuzz_sqlscan: flags byte (bit 0: SQL_SCAN_CARRY_SETS, bits 1-2: tracked list), then the text.
for i, sql in enumerate([
        "SET search_path TO a, b; SET LOCAL work_mem = '4MB'",
        "PREPARE p AS SELECT 1; EXECUTE p; DEALLOCATE p",
        "CREATE TEMP TABLE t (x int); SELECT * INTO TEMP u FROM t",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "LISTEN chan; UNLISTEN *; LOAD 'auto_explain'",
        "SELECT pg_advisory_lock(1), set_config('app.tenant', 'x', false)",
        "SELECT $tag$ ; SET x = 1 $tag$, 'it''s', E'\\'', \"Quoted\"\"Id\" /* /* nested */ */ -- c\n",
        "BEGIN; SAVEPOINT s; RELEASE s; COMMIT; DISCARD ALL; RESET ALL; DEALLOCATE ALL",
        "SET SESSION AUTHORIZATION bob; SET ROLE r; UPDATE pg_settings SET setting = 1",
        "set app.a = 1; set app.b = 2; set app.c = 3; set app.d = 4; set app.e = 5",
]):
    put("sqlscan", f"sql{i}", bytes([1 if i % 2 else 0]) + sql.encode())

put("secrets", "full", '{"username": "app", "password": "p@ss", "engine": "postgres", "host": "db.internal",'
    ' "port": 5433, "dbname": "shop", "dbInstanceIdentifier": "x"}')
put("secrets", "minimal", '{"username":"u","password":"p"}')
put("secrets", "port_string", '{"username":"u","password":"p","port":"5432","engine":"aurora-postgresql"}')
put("secrets", "escapes", '{"username":"\\u00e9","password":"\\ud83d\\ude00","host":null}')
put("secrets", "duplicate", '{"username":"u","username":"v","password":"p"}')

with open(os.path.join(HERE, "..", "..", "etc", "pgmux.ini"), "rb") as f:
    put("config", "example", b"\0" + f.read())
put("config", "small", b"\0[pgmux]\nlisten_port = 6432\nclient_auth = md5\nadmin_users = a, b\n"
    b"[target]\nhosts = 10.0.0.1:5432, [::1]:5433, db.example:5432\n[pool]\npool_mode = session\n")
put("config", "hosts", b"\1db1:5432, db2.example.com:6543 ,[fe80::1]:5432")
put("config", "bad_hosts", b"\1db1:, :5432,db:99999")

# fuzz_session: client_auth (0 scram-sha-256, 1 md5, 2 trust), then what the client sends.
SCRAM, MD5, TRUST = b"\0", b"\1", b"\2"
app = startup_packet(V3, [("user", "app"), ("database", "shop"), ("application_name", "fuzz")])
admin = startup_packet(V3, [("user", "admin"), ("database", "pgmux")])
first = "n,,n=,r=" + CLIENT_NONCE
put("session", "scram", SCRAM + app + msg("p", cstr("SCRAM-SHA-256") + struct.pack(">i", len(first)) + first.encode()) +
    msg("p", ("c=biws,r=" + CLIENT_NONCE + "x,p=" + base64.b64encode(bytes(32)).decode()).encode()))
put("session", "md5", MD5 + app + msg("p", cstr("md5" + "0" * 32)))
put("session", "ssl_then_startup", SCRAM + struct.pack(">II", 8, 80877103) + app)
put("session", "gss", SCRAM + struct.pack(">II", 8, 80877104))
put("session", "cancel", SCRAM + struct.pack(">IIII", 16, 80877102, 1, 2))
put("session", "trust_pool", TRUST + startup_packet(V3, [("user", "app"), ("options", "-c search_path=x --work-mem=1MB")]) +
    msg("Q", cstr("SELECT 1")))
put("session", "admin_show", TRUST + admin + msg("Q", cstr("SHOW HELP; SHOW POOLS; SHOW CLIENTS; SHOW SERVERS; "
                                                             "SHOW TARGETS; SHOW STATS; SHOW CONFIG; SHOW VERSION")))
put("session", "admin_commands", TRUST + admin + msg("Q", cstr("PAUSE '127.0.0.1:1'; RESUME \"127.0.0.1:1\"; KILL 999999")) +
    msg("Q", cstr("CUTOVER TO 'db1:5432, db2:5433'; RELOAD; SHOW STATS")) + msg("Q", cstr("SHUTDOWN")))
put("session", "admin_extended", TRUST + admin + msg("P", cstr("") + cstr("SHOW POOLS") + struct.pack(">h", 0)) +
    msg("B", cstr("") + cstr("") + struct.pack(">hhh", 0, 0, 0)) + msg("D", b"P" + cstr("")) +
    msg("E", cstr("") + struct.pack(">i", 0)) + msg("S", b"") +
    msg("P", cstr("") + cstr("CUTOVER TO 'x:1'") + struct.pack(">h", 0)) +
    msg("B", cstr("") + cstr("") + struct.pack(">hhh", 0, 0, 0)) + msg("E", cstr("") + struct.pack(">i", 0)) +
    msg("S", b""))
# fuzz_reply: a limit byte (max_prepared_statements 1 + b % 3), then steps: 0 a client message (type,
# name and text indexes, a raw byte), 1 the backend's next reply (a byte of how), 2 the client's input
# taken with no backend (unjudged, known), 3 the other backend. See tests/fuzz/fuzz_reply.c.
def fe(kind, name=0, text=0, raw=0):
    types = "PBDCESQHF"
    return bytes([0, types.index(kind), name, text, raw])


def be(n, how=2):
    return bytes([1, how]) * n


take = bytes([2, 0, 0])
put("reply", "prepared", bytes([0]) + fe("P", 1, 4) + fe("S") + take + be(2) + fe("B", 1) + fe("E") + fe("S") + be(4) +
    bytes([3]) + fe("B", 1) + fe("E") + fe("S") + take + be(6))
put("reply", "pipeline_error", bytes([1]) + fe("P", 1, 0) + fe("B", 1) + fe("S") + take + fe("P", 2, 4) + fe("B", 2) +
    fe("S") + fe("B", 1) + fe("S") + be(1) + bytes([1, 1]) + be(8))
put("reply", "discard", bytes([2]) + fe("P", 1, 0) + fe("S") + take + be(2) + fe("Q", 0, 6) + fe("P", 2, 4) +
    fe("B", 1) + fe("S") + be(8))
put("reply", "unnamed", bytes([0]) + fe("P", 0, 0) + fe("B", 0) + fe("S") + take + be(3) + bytes([3]) + fe("B", 0) +
    fe("D", 0) + fe("S") + take + be(4))
sys.exit(0)
