"""Alembic migrations, shipped inside the package (script_location hub.store:migrations)."""
