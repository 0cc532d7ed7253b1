-- The trace collector's spans (one plain table; retention deletes rows).
CREATE TABLE trace_spans (
    tenant TEXT NOT NULL,
    trace_id BLOB NOT NULL,
    span_id BLOB NOT NULL,
    parent_span_id BLOB,
    service TEXT NOT NULL,
    principal TEXT NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    status_code INTEGER NOT NULL,
    tags TEXT NOT NULL,
    span BLOB NOT NULL,
    resource BLOB NOT NULL,
    scope BLOB NOT NULL,
    PRIMARY KEY (tenant, trace_id, span_id)
);
CREATE INDEX trace_spans_service_op ON trace_spans (tenant, service, name, start_ns);
CREATE INDEX trace_spans_service ON trace_spans (tenant, service, start_ns);
CREATE INDEX trace_spans_start ON trace_spans (start_ns);

CREATE TABLE trace_operations (
    tenant TEXT NOT NULL,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, service, name, kind)
);
