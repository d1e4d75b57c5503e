-- The Accounts tables move to the accounts schema, which the Accounts service owns.
-- Keys migrations 100-102 created them in the keys schema (when Accounts lived in
-- services/keys/); a fresh database gets them from there too, as the keys process
-- applies its migrations before it sets Accounts up. SET SCHEMA keeps every row, and
-- moves each table's indexes, constraints and owned sequences with it.
ALTER TABLE keys.profiles SET SCHEMA accounts;
ALTER TABLE keys.devices SET SCHEMA accounts;
ALTER TABLE keys.one_time_keys SET SCHEMA accounts;
ALTER TABLE keys.fallback_keys SET SCHEMA accounts;
ALTER TABLE keys.cross_signing_keys SET SCHEMA accounts;
ALTER TABLE keys.device_list_streams SET SCHEMA accounts;
ALTER TABLE keys.openid_tokens SET SCHEMA accounts;
ALTER TABLE keys.remote_device_lists SET SCHEMA accounts;
ALTER TABLE keys.remote_devices SET SCHEMA accounts;
ALTER TABLE keys.remote_device_stream_ids SET SCHEMA accounts;
ALTER TABLE keys.device_list_join_cursor SET SCHEMA accounts;
ALTER TABLE keys.device_list_join_outbox SET SCHEMA accounts;
ALTER TABLE keys.to_device_streams SET SCHEMA accounts;
ALTER TABLE keys.to_device_inbox SET SCHEMA accounts;
ALTER TABLE keys.to_device_dedupe SET SCHEMA accounts;
ALTER TABLE keys.remote_presence SET SCHEMA accounts;
