"""Federation API routes, one module per area of the spec."""
