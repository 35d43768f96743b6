"""asyncpg's statement cache in transactions, more connections than backends.

Issue 15's class of failure with asyncpg: every query with parameters is
prepared under asyncpg's own name (__asyncpg_stmt_N__: Parse, Describe,
Sync, awaited before the Bind) and kept in the connection's statement cache,
so later transactions run it on whichever backend they get, with no Parse.
CLIENTS connections (4 per backend) write in multi-statement transactions
(`async with conn.transaction()`: executemany, UPDATE ... RETURNING through
a statement prepared with conn.prepare(), a rollback now and then) over
MAX_BACKENDS backends, and between transactions prepare statements outside
one. The committed rows are checked at the end.

Run by tests/integration/test_drivers.c with PGHOST, PGPORT, PGUSER,
PGPASSWORD and PGDATABASE set, against a pool of at most MAX_BACKENDS server
connections that makes a client wait at most a few seconds for one. Exits 0
and prints "asyncpg prepared ok: ..." when every check held; any failure
raises (exit 1) with what was wrong.
"""
import asyncio
import os
import sys

import asyncpg

ROUNDS = int(os.environ.get("DRIVER_ROUNDS", "40"))
MAX_BACKENDS = int(os.environ["MAX_BACKENDS"])
CLIENTS = 4 * MAX_BACKENDS
ROWS_PER_TXN = 5


class Rollback(Exception):
    pass


def params():
    return dict(host=os.environ["PGHOST"], port=int(os.environ["PGPORT"]), user=os.environ["PGUSER"],
                password=os.environ["PGPASSWORD"], database=os.environ["PGDATABASE"], ssl=False)


async def worker(n, pids):
    conn = await asyncpg.connect(**params())
    expected = {}
    try:
        bump = await conn.prepare("UPDATE driver_asyncpg_txn SET v = v + $1 WHERE n = $2 AND i = $3 RETURNING v")
        for i in range(ROUNDS):
            rows = [(n, i * 100 + k, k) for k in range(ROWS_PER_TXN)]
            rollback = i % 7 == 3
            try:
                async with conn.transaction():
                    await conn.executemany("INSERT INTO driver_asyncpg_txn (n, i, v) VALUES ($1, $2, $3)", rows)
                    assert await bump.fetchval(10, n, i * 100) == 10
                    count = await conn.fetchval("SELECT count(*) FROM driver_asyncpg_txn WHERE n = $1", n)
                    assert count == len(expected) + ROWS_PER_TXN, (count, len(expected))
                    pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
                    if rollback:
                        raise Rollback()
            except Rollback:
                pass
            if not rollback:
                for (_, key, v) in rows:
                    expected[key] = v + (10 if key == i * 100 else 0)
            # Outside a transaction: a statement new to this connection (Parse, Describe, Sync), then its run.
            st = await conn.prepare("SELECT sum(v) + $2::int FROM driver_asyncpg_txn WHERE n = $1 -- %d" % (i % 5))
            assert await st.fetchval(n, 0) == (sum(expected.values()) if expected else None)
            await asyncio.sleep(0)
        got = {r["i"]: r["v"] for r in await conn.fetch("SELECT i, v FROM driver_asyncpg_txn WHERE n = $1", n)}
        assert got == expected, "worker %d: committed rows %r, expected %r" % (n, got, expected)
    finally:
        await conn.close()


async def main():
    setup = await asyncpg.connect(**params())
    await setup.execute("DROP TABLE IF EXISTS driver_asyncpg_txn; "
                        "CREATE TABLE driver_asyncpg_txn (n int, i int, v int, PRIMARY KEY (n, i))")
    await setup.close()

    pids = set()
    await asyncio.wait_for(asyncio.gather(*(worker(n, pids) for n in range(CLIENTS))), timeout=100)

    check = await asyncpg.connect(**params())
    total = await check.fetchval("SELECT count(*) FROM driver_asyncpg_txn")
    await check.execute("DROP TABLE driver_asyncpg_txn")
    await check.close()
    committed_rounds = sum(1 for i in range(ROUNDS) if i % 7 != 3)
    want = CLIENTS * committed_rounds * ROWS_PER_TXN
    assert total == want, "expected %d rows, found %d" % (want, total)
    # DIRECT=1: a run straight against PostgreSQL, to check the script itself.
    assert len(pids) <= MAX_BACKENDS or os.environ.get("DIRECT"), (
        "%d backends served the clients, at most %d expected" % (len(pids), MAX_BACKENDS))
    print("asyncpg prepared ok: %d connections over %d backends, %d rows" % (CLIENTS, len(pids), total))


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
