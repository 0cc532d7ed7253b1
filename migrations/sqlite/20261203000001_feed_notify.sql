-- SQLite has no NOTIFY: the writer wakes its own server's feed in process, and other processes
-- poll. This migration keeps both dialects at the same versions.
SELECT 1;
