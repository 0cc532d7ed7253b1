-- RFC 8705 tls_client_auth: the URI SAN (SPIFFE ID) a client's certificate must carry to
-- authenticate at the token endpoint; NULL for clients that authenticate with their secret.
ALTER TABLE auth_clients ADD COLUMN tls_client_auth_san_uri TEXT;
