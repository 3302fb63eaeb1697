"""Source plugins: how messages arrive (HTTP webhooks; MLLP and alarm TCP later)."""
