"""LISTEN through pgmux in transaction pooling, the way each driver documents it.

psycopg 3 (an autocommit connection, conn.execute("LISTEN ..."),
conn.notifies()), psycopg2 (ISOLATION_LEVEL_AUTOCOMMIT, cursor.execute,
select() on the connection, conn.poll() and conn.notifies), asyncpg
(Connection.add_listener() and remove_listener()) and psql (LISTEN, then
the notification it prints after its next command) listen through pgmux
(PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE); a direct superuser session
(DIRECT_DSN) sends the NOTIFYs. Every driver must get exactly its
notifications, in order, with the notifying backend's pid and the payload
unchanged, while PostgreSQL sees no more than MAX_BACKENDS backends of the
pool and one LISTEN connection. test_listen.c runs it and checks that
nothing pinned a session. Prints "listen drivers ok" at the end.
"""

import asyncio
import os
import select
import signal
import subprocess
import sys

import asyncpg
import psycopg
import psycopg2
import psycopg2.extensions

MAX_BACKENDS = int(os.environ["MAX_BACKENDS"])
DIRECT_DSN = os.environ["DIRECT_DSN"]
PSQL = os.environ["PSQL"]
DSN = "host={PGHOST} port={PGPORT} user={PGUSER} password={PGPASSWORD} dbname={PGDATABASE} sslmode=disable".format(
    **os.environ
)

# Nothing here may hang the suite.
signal.alarm(60)


def fail(message):
    print("FAIL: " + message, flush=True)
    sys.exit(1)


def check(seen, want, who):
    if seen != want:
        fail("%s got %r, wanted %r" % (who, seen, want))


direct = psycopg.connect(DIRECT_DSN, autocommit=True)
NOTIFIER_PID = direct.info.backend_pid


def notify(channel, *payloads):
    for payload in payloads:
        direct.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def backends_seen():
    """The app's backends PostgreSQL has now (the pool's and pgmux's LISTEN connection)."""
    row = direct.execute(
        "SELECT count(*) FILTER (WHERE application_name <> 'pgmux listen'), "
        "count(*) FILTER (WHERE application_name = 'pgmux listen') FROM pg_stat_activity "
        "WHERE usename = %s AND datname = %s AND application_name <> 'pgmux health check'",
        (os.environ["PGUSER"], os.environ["PGDATABASE"]),
    ).fetchone()
    if row[0] > MAX_BACKENDS or row[1] > 1:
        fail("PostgreSQL sees %d backends of the pool and %d LISTEN connections" % row)
    return row


# ---------------------------------------------------------------- psycopg 3
def psycopg3():
    conn = psycopg.connect(DSN, autocommit=True)
    conn.execute("LISTEN psycopg3_chan")
    conn.execute('LISTEN "Psycopg3 Quoted"')
    backends_seen()
    notify("psycopg3_chan", "one", "two")
    notify("Psycopg3 Quoted", "three")
    seen = []
    for n in conn.notifies():
        if n.pid != NOTIFIER_PID:
            fail("psycopg 3: pid %d, the notifier is %d" % (n.pid, NOTIFIER_PID))
        seen.append((n.channel, n.payload))
        if len(seen) == 3:
            break
    check(seen, [("psycopg3_chan", "one"), ("psycopg3_chan", "two"), ("Psycopg3 Quoted", "three")], "psycopg 3")
    # Queries go on as usual, and UNLISTEN ends it.
    if conn.execute("SELECT 6 * 7").fetchone()[0] != 42:
        fail("psycopg 3: a query after LISTEN")
    conn.execute("UNLISTEN *")
    conn.close()


def psycopg3_transactions():
    """Not autocommit: psycopg sends BEGIN first; an UNLISTEN takes effect at COMMIT, not at ROLLBACK."""
    conn = psycopg.connect(DSN)
    conn.execute("LISTEN psycopg3_tx")
    conn.execute("LISTEN psycopg3_tx_other")
    conn.commit()
    conn.execute("UNLISTEN psycopg3_tx")
    conn.rollback()
    notify("psycopg3_tx", "kept")
    for n in conn.notifies():
        check((n.channel, n.payload), ("psycopg3_tx", "kept"), "psycopg 3 after ROLLBACK")
        break
    conn.execute("UNLISTEN psycopg3_tx")
    conn.commit()
    notify("psycopg3_tx", "gone")
    notify("psycopg3_tx_other", "sentinel")
    for n in conn.notifies():
        check((n.channel, n.payload), ("psycopg3_tx_other", "sentinel"), "psycopg 3 after COMMIT")
        break
    conn.close()


# ---------------------------------------------------------------- psycopg2
def psycopg2_listen():
    conn = psycopg2.connect(DSN)
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    curs = conn.cursor()
    curs.execute("LISTEN psycopg2_chan;")
    notify("psycopg2_chan", "a", "b", "c")
    seen = []
    while len(seen) < 3:
        if select.select([conn], [], [], 10) == ([], [], []):
            fail("psycopg2: no notification within 10 s (got %r)" % seen)
        conn.poll()
        while conn.notifies:
            n = conn.notifies.pop(0)
            if n.pid != NOTIFIER_PID:
                fail("psycopg2: pid %d, the notifier is %d" % (n.pid, NOTIFIER_PID))
            seen.append((n.channel, n.payload))
    check(seen, [("psycopg2_chan", "a"), ("psycopg2_chan", "b"), ("psycopg2_chan", "c")], "psycopg2")
    curs.execute("UNLISTEN psycopg2_chan;")
    notify("psycopg2_chan", "after unlisten")
    if select.select([conn], [], [], 0.3) != ([], [], []):
        conn.poll()
        if conn.notifies:
            fail("psycopg2: a notification after UNLISTEN: %r" % conn.notifies)
    conn.close()


# ---------------------------------------------------------------- asyncpg
async def asyncpg_listen():
    # asyncpg reads PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE.
    conn = await asyncpg.connect(ssl=False)
    got = asyncio.Queue()

    def on_notify(connection, pid, channel, payload):
        got.put_nowait((pid, channel, payload))

    await conn.add_listener("asyncpg_chan", on_notify)
    backends_seen()
    notify("asyncpg_chan", "x", "y")
    seen = []
    for _ in range(2):
        pid, channel, payload = await asyncio.wait_for(got.get(), 10)
        if pid != NOTIFIER_PID:
            fail("asyncpg: pid %d, the notifier is %d" % (pid, NOTIFIER_PID))
        seen.append((channel, payload))
    check(seen, [("asyncpg_chan", "x"), ("asyncpg_chan", "y")], "asyncpg")
    if await conn.fetchval("SELECT 1 + 1") != 2:
        fail("asyncpg: a query after add_listener")
    await conn.remove_listener("asyncpg_chan", on_notify)
    notify("asyncpg_chan", "after remove_listener")
    await asyncio.sleep(0.3)
    if not got.empty():
        fail("asyncpg: a notification after remove_listener")
    await conn.close()


# ---------------------------------------------------------------- psql
def psql_listen():
    # psql prints a notification after the command during which it arrived.
    # Delivery is asynchronous, directly too (the listening backend is
    # signalled after the NOTIFY commits): one that comes after the last
    # command's answer is never printed, so the script waits a moment first.
    script = (
        "LISTEN psql_chan;\n"
        "\\! %s '%s' -qAtc \"NOTIFY psql_chan, 'from psql'\"\n"
        "SELECT pg_sleep(0.5);\n"
        "SELECT 'after';\n" % (PSQL, DIRECT_DSN)
    )
    out = subprocess.run(
        [PSQL, DSN, "-X", "-q"], input=script, capture_output=True, text=True, timeout=30
    )
    want = 'Asynchronous notification "psql_chan" with payload "from psql" received from server process with PID'
    if out.returncode != 0 or want not in out.stdout + out.stderr:
        fail("psql: exit %d, output %r %r" % (out.returncode, out.stdout, out.stderr))


psycopg3()
psycopg3_transactions()
print("psycopg 3 ok", flush=True)
psycopg2_listen()
print("psycopg2 ok", flush=True)
asyncio.run(asyncpg_listen())
print("asyncpg ok", flush=True)
psql_listen()
print("psql ok", flush=True)
direct.close()
print("listen drivers ok", flush=True)
