"""What tests/transcripts/asyncpg.txt records: asyncpg with its statement
cache (named statements __asyncpg_stmt_N__, each Parse and Describe with a
Sync of its own before its first Bind), executemany in a transaction, a
failing statement, an explicit prepare, and its reset on close. Connects with
the PG* variables (record.py sets PGHOST and PGPORT)."""
import asyncio

import asyncpg


async def main():
    conn = await asyncpg.connect()
    await conn.execute("CREATE TABLE IF NOT EXISTS transcript_asyncpg (n int, t text)")
    await conn.execute("TRUNCATE transcript_asyncpg")
    for i in range(3):
        assert await conn.fetchval("SELECT $1::int + $2::int", i, 1) == i + 1
    async with conn.transaction():
        await conn.executemany("INSERT INTO transcript_asyncpg VALUES ($1, $2)", [(1, "a"), (2, "b"), (3, "c")])
        rows = await conn.fetch("SELECT n, t FROM transcript_asyncpg ORDER BY n")
        assert [r["n"] for r in rows] == [1, 2, 3]
    try:
        await conn.fetchval("SELECT 1 / $1::int", 0)
    except asyncpg.exceptions.DivisionByZeroError:
        pass
    else:
        raise AssertionError("no error from the division by zero")
    stmt = await conn.prepare("SELECT $1::text || 'x'")
    assert await stmt.fetchval("a") == "ax"
    assert await stmt.fetchval("b") == "bx"
    assert await conn.fetchval("SELECT $1::int + $2::int", 5, 1) == 6
    await conn.execute("DROP TABLE transcript_asyncpg")
    await conn.close()


asyncio.run(main())
print("asyncpg transcript ok")
