-- A replica's name, stable across its restarts (instance_name: host or pod
-- name); a replica starting under a name takes back the leases of that
-- name's earlier incarnations at once, instead of waiting for them to expire.
ALTER TABLE replicas ADD COLUMN name text;
