"""Real third-party and loopback test peers (Medplum, PostgreSQL, fault proxy, HTTP receiver)."""
