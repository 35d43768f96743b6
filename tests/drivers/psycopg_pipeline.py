"""psycopg 3 and psycopg2 through pgmux in transaction pooling.

psycopg 3 with prepare_threshold=0 prepares every parameterised query on the
server under its own names (_pg3_N), and its pipeline mode sends many
extended-protocol batches before reading any result; Connection.cancel()
sends a CancelRequest from another thread. psycopg2 sends simple
queries with the parameters already in the text, and opens a transaction
block on the first statement unless autocommit is on.

Run by tests/integration/test_drivers.c with PGHOST, PGPORT, PGUSER,
PGPASSWORD and PGDATABASE set, against a pool of at most MAX_BACKENDS server
connections. Exits 0 and prints "psycopg ok: ..." when every check held; any
failure raises (exit 1) with what was wrong.
"""
import os
import sys
import threading

import psycopg
import psycopg2

CLIENTS = 6
ROUNDS = int(os.environ.get("DRIVER_ROUNDS", "40"))
MAX_BACKENDS = int(os.environ["MAX_BACKENDS"])
CONNINFO = "sslmode=disable"  # the rest comes from the PG* variables

pids = set()
pids_lock = threading.Lock()
errors = []


def note_pid(pid):
    with pids_lock:
        pids.add(pid)


def psycopg3_worker(n):
    with psycopg.connect(CONNINFO, prepare_threshold=0, autocommit=True) as conn:
        for i in range(ROUNDS):
            cur = conn.execute("SELECT %s::int + %s::int", (n, i))
            assert cur.fetchone()[0] == n + i
            note_pid(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            # A pipeline: several batches of Parse/Bind/Execute/Sync in flight at once.
            with conn.pipeline():
                cur = conn.cursor()
                cur.executemany("INSERT INTO driver_psycopg (n, i) VALUES (%s, %s)",
                                [(n, i * 10 + k) for k in range(4)])
                c1 = conn.execute("SELECT count(*) FROM driver_psycopg WHERE n = %s AND i >= %s", (n, i * 10))
                c2 = conn.execute("SELECT %s::text", ("w%d" % n,))
            assert c1.fetchone()[0] == 4
            assert c2.fetchone()[0] == "w%d" % n
            # A transaction block: the session's SET LOCAL stays inside it.
            with conn.transaction():
                conn.execute("SET LOCAL work_mem = '3MB'")
                assert conn.execute("SHOW work_mem").fetchone()[0] == "3MB"
            assert conn.execute("SHOW work_mem").fetchone()[0] != "3MB"


def psycopg2_worker(n):
    conn = psycopg2.connect(CONNINFO)
    try:
        cur = conn.cursor()
        cur.execute("SET application_name = %s", ("psycopg2-%d" % n,))
        conn.commit()
        for i in range(ROUNDS):
            # Not autocommit: psycopg2 sends BEGIN first, the backend stays with this client until COMMIT.
            cur.execute("INSERT INTO driver_psycopg (n, i) VALUES (%s, %s)", (100 + n, i))
            cur.execute("SELECT current_setting('application_name'), pg_backend_pid()")
            name, pid = cur.fetchone()
            assert name == "psycopg2-%d" % n, name
            note_pid(pid)
            conn.commit()
    finally:
        conn.close()


def psycopg3_cancel():
    # Connection.cancel() from another thread, with the key pgmux gave the client:
    # the statement fails with 57014 and the connection goes on.
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        try:
            conn.execute("SELECT pg_sleep(30)")
            raise AssertionError("pg_sleep(30) was not cancelled")
        except psycopg.errors.QueryCanceled:
            pass
        finally:
            timer.cancel()
        assert conn.execute("SELECT 'after the cancel'").fetchone()[0] == "after the cancel"


def run(target, n):
    try:
        target(n)
    except BaseException as e:  # reported by the main thread
        errors.append("%s(%d): %r" % (target.__name__, n, e))


def main():
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS driver_psycopg")
        conn.execute("CREATE TABLE driver_psycopg (n int, i int)")
    threads = [threading.Thread(target=run, args=(psycopg3_worker, n)) for n in range(CLIENTS)]
    threads += [threading.Thread(target=run, args=(psycopg2_worker, n)) for n in range(2)]
    threads.append(threading.Thread(target=run, args=(lambda n: psycopg3_cancel(), 0)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("psycopg failed:\n" + "\n".join(errors))
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        total = conn.execute("SELECT count(*) FROM driver_psycopg").fetchone()[0]
        conn.execute("DROP TABLE driver_psycopg")
    want = CLIENTS * ROUNDS * 4 + 2 * ROUNDS
    assert total == want, "expected %d rows, found %d" % (want, total)
    # pgmux closes a backend it sent a cancel to (a late cancel must not hit someone else's
    # statement), so the one cancel may bring one more backend.
    assert len(pids) <= MAX_BACKENDS + 1, "%d backends served the clients, at most %d expected" % (
        len(pids), MAX_BACKENDS + 1)
    print("psycopg ok: %d psycopg 3 and 2 psycopg2 connections over %d backends, %d rows"
          % (CLIENTS, len(pids), total))


if __name__ == "__main__":
    main()
