-- What tests/transcripts/psql.txt records: psql -f of this file (simple queries only).
SELECT 1 AS one;
CREATE TABLE IF NOT EXISTS transcript_psql (id int PRIMARY KEY, note text);
TRUNCATE transcript_psql;
BEGIN;
INSERT INTO transcript_psql VALUES (1, 'one'), (2, 'two');
SELECT * FROM transcript_psql ORDER BY id;
COMMIT;
BEGIN;
SELECT 1 / 0;
ROLLBACK;
SET application_name = 'transcript';
SET statement_timeout = '5s';
SELECT count(*) > 0 FROM pg_class;
\d transcript_psql
COPY transcript_psql TO STDOUT;
COPY transcript_psql FROM STDIN;
3	three
\.
SELECT 1; SELECT 2;
SELECT * FROM no_such_table;
DO $$ BEGIN RAISE NOTICE 'a notice'; END $$;
DEALLOCATE ALL;
DROP TABLE transcript_psql;
