"""History reads over the room DAG (``mxfed.events.v1.History``), in the events process."""
