"""The room directory and spaces: publishing rooms, /publicRooms, /hierarchy.

A separate gRPC service (``mxfed.events.v1.Directory``) in the events
process, reading the rooms' current state from the events tables.
"""
