"""The operator's administrative actions (``mxfed.events.v1.Admin``), in the events process."""
