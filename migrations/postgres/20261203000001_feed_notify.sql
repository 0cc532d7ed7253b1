-- The change feed wakes every replica: a committed insert into core_changes sends NOTIFY on
-- channel capstan_changes (once per transaction; delivered at commit). The table stays the source
-- of truth: the notification carries no data and pollers read the rows after their cursor.
CREATE FUNCTION core_changes_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('capstan_changes', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER core_changes_notify
    AFTER INSERT ON core_changes
    FOR EACH STATEMENT EXECUTE FUNCTION core_changes_notify();
