"""Storage: tables, engines, migrations and the repository the stages use."""
