"""mxfed's gRPC services; each folder is one independently scalable component."""
