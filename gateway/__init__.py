"""The federation HTTP gateway: TLS, X-Matrix verification, routing to the services.

Stateless: any replica serves any request; everything durable lives behind
the gRPC services.
"""
