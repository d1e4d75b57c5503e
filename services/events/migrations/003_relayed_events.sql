-- Events we accepted on behalf of a remote server (send_join, send_leave,
-- send_knock): we must deliver them to the room's other servers like our own
-- events, except to the server we acted for.
ALTER TABLE events ADD COLUMN relayed_for text;
