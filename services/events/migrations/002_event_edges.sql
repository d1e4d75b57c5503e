-- prev_events edges of stored events: which events cite an event as prev
-- (is it still a forward extremity?) and DAG walks without parsing JSON.
CREATE TABLE event_edges (
    prev_event_id text NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (prev_event_id, event_id)
);

INSERT INTO event_edges (prev_event_id, event_id)
SELECT DISTINCT
       CASE jsonb_typeof(p) WHEN 'array' THEN p ->> 0 ELSE p #>> '{}' END, e.event_id
  FROM events e
 CROSS JOIN LATERAL jsonb_array_elements(
       CASE jsonb_typeof(e.pdu_json::jsonb -> 'prev_events')
       WHEN 'array' THEN e.pdu_json::jsonb -> 'prev_events' ELSE '[]'::jsonb END) p;
