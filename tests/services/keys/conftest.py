"""Keys service fixtures (defined in ``fixtures.py`` so the gateway tests can share them)."""

from tests.services.keys.fixtures import (  # noqa: F401
    federation_client,
    key_server_factory,
    keys_config,
    keys_pool,
    keys_service,
    keys_storage,
    make_keys,
    tls_dir,
)
