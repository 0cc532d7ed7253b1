-- A span is stored once per (tenant, trace_id, span_id), whatever start time a repeat claims,
-- within the day partition its start falls in. A partitioned table's own keys must hold the
-- partition key (start_ns), so the key lives on each partition instead: the service creates it
-- with every new partition, and this migration adds it to the partitions already there (after
-- removing any repeats they hold, keeping the first stored). `INSERT … ON CONFLICT DO NOTHING`
-- uses a partition's unique indexes, so repeats are skipped, not failed.
ALTER TABLE trace_spans DROP CONSTRAINT IF EXISTS trace_spans_pkey;

DO $$
DECLARE
    part text;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'trace_spans'
    LOOP
        EXECUTE format(
            'DELETE FROM %I a USING %I b WHERE a.tenant = b.tenant AND a.trace_id = b.trace_id '
            'AND a.span_id = b.span_id AND a.ctid > b.ctid', part, part);
        EXECUTE format('CREATE UNIQUE INDEX IF NOT EXISTS %I ON %I (tenant, trace_id, span_id)',
            part || '_span', part);
    END LOOP;
END
$$;
