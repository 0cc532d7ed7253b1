-- The W3C trace id of the request a decision was made for (its `traceparent`), so that
-- `GET /v1/decisions?trace_id=` finds the decisions one trace made. NULL for requests that
-- carried no valid traceparent.
ALTER TABLE policy_decisions ADD COLUMN trace_id TEXT;
-- Partial: most decisions have no trace id, and those cost the log's insert path nothing. The
-- column is new, so building the index reads the table but writes no entries.
CREATE INDEX policy_decisions_tenant_trace ON policy_decisions (tenant, trace_id)
    WHERE trace_id IS NOT NULL;
