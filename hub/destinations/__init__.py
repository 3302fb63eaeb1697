"""Destination plugins: where deliveries go (FHIR REST, folder; VKP, JFT, PMD, MLLP later)."""
