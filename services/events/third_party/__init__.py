"""Third-party invites: store-invite with an identity server, 3pid/onbind and
exchange_third_party_invite (the ThirdPartyInvites gRPC service)."""
