-- The trace collector's spans, partitioned by day of their start (Unix ns). The service creates
-- each day's partition before its first write there and drops whole partitions past retention.
-- The key holds start_ns because a partitioned table's keys must hold its partition key; a
-- retried export repeats it, so storage stays idempotent on (tenant, trace_id, span_id).
CREATE TABLE trace_spans (
    tenant text NOT NULL,
    trace_id bytea NOT NULL,
    span_id bytea NOT NULL,
    parent_span_id bytea,
    service text NOT NULL,
    principal text NOT NULL,
    name text NOT NULL,
    kind smallint NOT NULL,
    start_ns bigint NOT NULL,
    duration_ns bigint NOT NULL,
    status_code smallint NOT NULL,
    tags jsonb NOT NULL,
    span bytea NOT NULL,
    resource bytea NOT NULL,
    scope bytea NOT NULL,
    PRIMARY KEY (tenant, trace_id, span_id, start_ns)
) PARTITION BY RANGE (start_ns);

-- Searches: service (+ operation) over a time range.
CREATE INDEX trace_spans_service_op ON trace_spans (tenant, service, name, start_ns);
CREATE INDEX trace_spans_service ON trace_spans (tenant, service, start_ns);

-- Each (service, operation, kind) seen, so listing never scans spans.
CREATE TABLE trace_operations (
    tenant text NOT NULL,
    service text NOT NULL,
    name text NOT NULL,
    kind smallint NOT NULL,
    last_seen_ns bigint NOT NULL,
    PRIMARY KEY (tenant, service, name, kind)
);
