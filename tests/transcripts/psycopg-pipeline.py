"""What tests/transcripts/psycopg-pipeline.txt records: psycopg 3 with
prepare_threshold=0 (every parameterised query prepared under its own name,
_pg3_N) in pipeline mode, several batches in flight (one binding a statement
parsed in another still unanswered), one that fails half way (the rest of its
batch is skipped), a transaction block, and psycopg's DEALLOCATE ALL at the
end. Connects with the
PG* variables (record.py sets PGHOST and PGPORT)."""
import psycopg

with psycopg.connect("", prepare_threshold=0, autocommit=True) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS transcript_psycopg (n int, t text)")
    conn.execute("TRUNCATE transcript_psycopg")
    for i in range(3):
        with conn.pipeline():
            cur = conn.cursor()
            cur.executemany("INSERT INTO transcript_psycopg VALUES (%s, %s)", [(i, "a"), (i, "b")])
            c1 = conn.execute("SELECT count(*) FROM transcript_psycopg WHERE n = %s", (i,))
            c2 = conn.execute("SELECT %s::text", ("w%d" % i,))
        assert c1.fetchone()[0] == 2
        assert c2.fetchone()[0] == "w%d" % i
    # Batches in flight one behind the other (explicit syncs): a later one
    # binds a statement whose Parse is in an earlier, still unanswered.
    with conn.pipeline() as p:
        a = conn.execute("SELECT %s::int * 2", (21,))
        p.sync()
        b = conn.execute("SELECT %s::int * 2", (4,))
        p.sync()
        c = conn.execute("SELECT %s::int * 3", (5,))
    assert (a.fetchone()[0], b.fetchone()[0], c.fetchone()[0]) == (42, 8, 15)
    try:
        with conn.pipeline():
            conn.execute("SELECT %s::int", (1,))
            conn.execute("SELECT 1 / %s::int", (0,))
            conn.execute("SELECT %s::int", (2,))
            conn.execute("SELECT %s::bigint", (3,))  # a new statement, skipped with the rest
    except psycopg.errors.DivisionByZero:
        pass
    else:
        raise AssertionError("no error from the division by zero")
    try:
        conn.execute("SELECT %s::bigint", (4,))
    except psycopg.errors.InvalidSqlStatementName:
        # psycopg 3.1 takes the skipped Parse for done and binds the statement
        # at once: PostgreSQL (and pgmux) say it does not exist.
        pass
    with conn.transaction():
        conn.execute("INSERT INTO transcript_psycopg VALUES (%s, %s)", (9, "t"))
        assert conn.execute("SELECT count(*) FROM transcript_psycopg WHERE n = %s", (9,)).fetchone()[0] == 1
    assert conn.execute("SELECT %s::int + %s::int", (20, 22)).fetchone()[0] == 42
    conn.execute("DROP TABLE transcript_psycopg")
print("psycopg transcript ok")
