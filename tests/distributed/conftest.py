"""The loopback servers' fixtures (tests/distributed/servers.py) for every test here."""

from tests.distributed.servers import postgres, redis, s3  # noqa: F401
