"""psycopg 3 with server-side prepared statements, more connections than backends.

Issue 15: with transaction pooling, a client that prepares a statement
synchronously (libpq's PQprepare: Parse + Sync) while every backend is held
by transactions that only the same thread can finish deadlocks through the
pooler, where it would not directly. Two parts:

1. CLIENTS threads, one psycopg 3 connection each (prepare_threshold=0: every
   statement is prepared on the server under psycopg's names, with a
   synchronous Parse + Sync before its first run), write in multi-statement
   transactions (executemany, UPDATE ... RETURNING, a rollback now and then)
   over MAX_BACKENDS backends; the committed rows are checked at the end.
2. pgbench's pattern in ONE thread: MAX_BACKENDS connections each hold a
   transaction open (and so a backend); another connection, outside a
   transaction, prepares a statement it never prepared before, synchronously
   (PQprepare, through psycopg's libpq wrapper), then sends its execution
   without waiting (PQsendQueryPrepared); only then does the thread commit
   the others' transactions, and collect the result. Directly against
   PostgreSQL this never waits; through a pooler that needs a backend for the
   Parse it waits for a backend the thread itself holds.

Run by tests/integration/test_drivers.c with PGHOST, PGPORT, PGUSER,
PGPASSWORD and PGDATABASE set, against a pool of at most MAX_BACKENDS server
connections that makes a client wait at most a few seconds for one. Exits 0
and prints "psycopg prepared ok: ..." when every check held; any failure
raises (exit 1) with what was wrong. A watchdog ends it with every thread's
traceback should it hang.
"""
import faulthandler
import os
import sys
import threading

import psycopg
from psycopg import pq

ROUNDS = int(os.environ.get("DRIVER_ROUNDS", "40"))
MAX_BACKENDS = int(os.environ["MAX_BACKENDS"])
CLIENTS = 4 * MAX_BACKENDS
ROWS_PER_TXN = 5
CONNINFO = "sslmode=disable"  # the rest comes from the PG* variables

errors = []
pids = set()
pids_lock = threading.Lock()


def worker(n):
    """Part 1: transactions of prepared writes on a connection of its own."""
    expected = {}
    with psycopg.connect(CONNINFO, prepare_threshold=0) as conn:
        for i in range(ROUNDS):
            rows = [(n, i * 100 + k, k) for k in range(ROWS_PER_TXN)]
            rollback = i % 7 == 3
            try:
                with conn.transaction():
                    cur = conn.cursor()
                    cur.executemany("INSERT INTO driver_prepared (n, i, v) VALUES (%s, %s, %s)", rows)
                    cur.execute("UPDATE driver_prepared SET v = v + %s WHERE n = %s AND i = %s RETURNING v",
                                (10, n, i * 100))
                    assert cur.fetchone()[0] == 10
                    cur.execute("SELECT count(*), pg_backend_pid() FROM driver_prepared WHERE n = %s", (n,))
                    count, pid = cur.fetchone()
                    assert count == len(expected) + ROWS_PER_TXN, (count, len(expected))
                    with pids_lock:
                        pids.add(pid)
                    if rollback:
                        raise psycopg.Rollback()
            except psycopg.Rollback:
                pass
            if not rollback:
                for (_, key, v) in rows:
                    expected[key] = v + (10 if key == i * 100 else 0)
            # Outside a transaction: a statement of its own, prepared and run.
            cur = conn.execute("SELECT sum(v) FROM driver_prepared WHERE n = %s", (n,))
            assert cur.fetchone()[0] == (sum(expected.values()) if expected else None)
            conn.commit()
        got = dict(conn.execute("SELECT i, v FROM driver_prepared WHERE n = %s", (n,)).fetchall())
        conn.commit()
        assert got == expected, "worker %d: committed rows %r, expected %r" % (n, got, expected)


def run(n):
    try:
        worker(n)
    except BaseException as e:  # reported by the main thread
        errors.append("worker %d: %r" % (n, e))


def pgbench_pattern():
    """Part 2: one thread; MAX_BACKENDS transactions open while another connection prepares."""
    holders = [psycopg.connect(CONNINFO, prepare_threshold=0) for _ in range(MAX_BACKENDS + 2)]
    preparers = [psycopg.connect(CONNINFO, prepare_threshold=0, autocommit=True) for _ in range(3)]
    try:
        for r in range(ROUNDS):
            # The holders take turns: MAX_BACKENDS of them hold a transaction (and a backend) each.
            held = [holders[(r + k) % len(holders)] for k in range(MAX_BACKENDS)]
            for k, conn in enumerate(held):
                conn.execute("INSERT INTO driver_prepared (n, i, v) VALUES (%s, %s, %s)", (1000 + k, r, 1))
            assert all(c.info.transaction_status == pq.TransactionStatus.INTRANS for c in held)
            # Another connection, idle, prepares a statement it never prepared, as PQprepare does.
            b = preparers[r % len(preparers)].pgconn
            name = ("round_%d" % r).encode()
            res = b.prepare(name, b"INSERT INTO driver_prepared (n, i, v) VALUES ($1::int, $2::int, $3::int) "
                                  b"RETURNING v")
            assert res.status == pq.ExecStatus.COMMAND_OK, (
                "round %d: PQprepare while %d transactions hold every backend failed: %s"
                % (r, MAX_BACKENDS, res.error_message.decode(errors="replace")))
            # Its execution goes out without waiting, as pgbench sends it...
            b.send_query_prepared(name, [b"2000", str(r).encode(), b"7"])
            # ...then the same thread finishes the other transactions...
            for conn in held:
                conn.commit()
            # ...and collects the result.
            res = b.get_result()
            assert res is not None and res.status == pq.ExecStatus.TUPLES_OK, (
                "round %d: the prepared INSERT failed: %s"
                % (r, res.error_message.decode(errors="replace") if res else "no result"))
            assert res.get_value(0, 0) == b"7"
            assert b.get_result() is None
        # Every transaction committed: MAX_BACKENDS rows a round from the holders, one from the preparers.
        with psycopg.connect(CONNINFO, autocommit=True) as check:
            held_rows = check.execute("SELECT count(*) FROM driver_prepared WHERE n >= 1000 AND n < 2000").fetchone()[0]
            prepared_rows = check.execute("SELECT count(*) FROM driver_prepared WHERE n = 2000").fetchone()[0]
        assert held_rows == ROUNDS * MAX_BACKENDS, (held_rows, ROUNDS * MAX_BACKENDS)
        assert prepared_rows == ROUNDS, (prepared_rows, ROUNDS)
    finally:
        for conn in holders + preparers:
            conn.close()


def main():
    # A hang ends the script with every thread's traceback rather than at the caller's time limit.
    faulthandler.dump_traceback_later(100, exit=True)
    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS driver_prepared")
        conn.execute("CREATE TABLE driver_prepared (n int, i int, v int, PRIMARY KEY (n, i))")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("psycopg prepared failed:\n" + "\n".join(errors))
    # DIRECT=1: a run straight against PostgreSQL, to check the script itself.
    assert len(pids) <= MAX_BACKENDS or os.environ.get("DIRECT"), (
        "%d backends served the clients, at most %d expected" % (len(pids), MAX_BACKENDS))
    print("part 1 (threads) passed", flush=True)

    pgbench_pattern()

    with psycopg.connect(CONNINFO, autocommit=True) as conn:
        total = conn.execute("SELECT count(*) FROM driver_prepared WHERE n < 1000").fetchone()[0]
        conn.execute("DROP TABLE driver_prepared")
    committed_rounds = sum(1 for i in range(ROUNDS) if i % 7 != 3)
    want = CLIENTS * committed_rounds * ROWS_PER_TXN
    assert total == want, "expected %d rows, found %d" % (want, total)
    print("psycopg prepared ok: %d rounds of PQprepare while %d transactions held every backend; "
          "%d connections in %d threads over %d backends, %d rows" % (ROUNDS, MAX_BACKENDS, CLIENTS, CLIENTS,
                                                                      len(pids), total))


if __name__ == "__main__":
    main()
