"""asyncpg through pgmux in transaction pooling.

asyncpg prepares every query with parameters under a name of its own
(__asyncpg_stmt_N__) and keeps it in a per-connection cache, runs its pool's
reset query (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *, RESET ALL) when a
connection goes back to its pool, relies on the server's parameters, and
cancels a query that outlives its timeout with the key pgmux gave it.
Under PgBouncer's transaction pooling this is the classic "prepared statement
__asyncpg_stmt_1__ does not exist" failure.

Run by tests/integration/test_drivers.c with PGHOST, PGPORT, PGUSER,
PGPASSWORD and PGDATABASE set, against a pool of at most MAX_BACKENDS server
connections. Exits 0 and prints "asyncpg ok: ..." when every check held; any
failure raises (exit 1) with what was wrong.
"""
import asyncio
import os
import sys

import asyncpg

CLIENTS = 8
ROUNDS = int(os.environ.get("DRIVER_ROUNDS", "40"))
MAX_BACKENDS = int(os.environ["MAX_BACKENDS"])


def params():
    return dict(host=os.environ["PGHOST"], port=int(os.environ["PGPORT"]), user=os.environ["PGUSER"],
                password=os.environ["PGPASSWORD"], database=os.environ["PGDATABASE"], ssl=False)


async def pooled_worker(pool, n, pids):
    for i in range(ROUNDS):
        async with pool.acquire() as conn:
            # A parameterised query: prepared under asyncpg's own name, cached by the connection.
            assert await conn.fetchval("SELECT $1::int + $2::int", n, i) == n + i
            pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
            # An explicit prepared statement, run twice, whatever backend each run gets.
            st = await conn.prepare("SELECT $1::text || '-' || $2::text")
            assert await st.fetchval("w%d" % n, str(i)) == "w%d-%d" % (n, i)
            assert await st.fetchval("again", str(i)) == "again-%d" % i
            # A transaction block with a transaction-local setting and a batch of inserts.
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.worker', $1, true)", str(n))
                await conn.executemany("INSERT INTO driver_asyncpg (n, i) VALUES ($1, $2)",
                                       [(n, i * 10 + k) for k in range(3)])
                assert await conn.fetchval("SELECT current_setting('app.worker')") == str(n)
            # Rows come back through asyncpg's binary decoding.
            rows = await conn.fetch("SELECT i FROM driver_asyncpg WHERE n = $1 AND i >= $2 ORDER BY i",
                                    n, i * 10)
            assert [r["i"] for r in rows] == [i * 10 + k for k in range(3)], rows


async def session_worker(pids):
    # A connection of its own that SETs a parameter PostgreSQL does not report:
    # every later query must still see it, whichever backend runs it.
    conn = await asyncpg.connect(**params())
    try:
        # asyncpg's own timeout: it sends a CancelRequest with the key pgmux gave it, and the
        # connection must be usable afterwards.
        try:
            await conn.fetchval("SELECT pg_sleep(30)", timeout=0.5)
            raise AssertionError("pg_sleep(30) ran past its 0.5 s timeout")
        except asyncio.TimeoutError:
            pass
        assert await conn.fetchval("SELECT 'after the cancel'") == "after the cancel"
        await conn.execute("SET statement_timeout = '7s'")
        await conn.execute("SET search_path = information_schema, public")
        for i in range(ROUNDS):
            assert await conn.fetchval("SHOW statement_timeout") == "7s"
            assert await conn.fetchval("SELECT current_schema()") == "information_schema"
            assert await conn.fetchval("SELECT $1::int * 2", i) == i * 2
            pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
            await asyncio.sleep(0)
    finally:
        await conn.close()


async def main():
    setup = await asyncpg.connect(**params())
    await setup.execute("DROP TABLE IF EXISTS driver_asyncpg; CREATE TABLE driver_asyncpg (n int, i int)")
    await setup.close()

    pids = set()
    pool = await asyncpg.create_pool(min_size=CLIENTS, max_size=CLIENTS, **params())
    await asyncio.gather(session_worker(pids), *(pooled_worker(pool, n, pids) for n in range(CLIENTS)))
    await pool.close()

    check = await asyncpg.connect(**params())
    total = await check.fetchval("SELECT count(*) FROM driver_asyncpg")
    await check.execute("DROP TABLE driver_asyncpg")
    await check.close()
    assert total == CLIENTS * ROUNDS * 3, "expected %d rows, found %d" % (CLIENTS * ROUNDS * 3, total)
    # pgmux closes a backend it sent a cancel to (a late cancel must not hit someone else's
    # statement), so the one cancel may bring one more backend.
    assert len(pids) <= MAX_BACKENDS + 1, "%d backends served the clients, at most %d expected" % (
        len(pids), MAX_BACKENDS + 1)
    print("asyncpg ok: %d pooled connections and one session over %d backends, %d rows"
          % (CLIENTS, len(pids), total))


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
