"""Bootstraps the central tenants BigQuery dataset and keeps it in the declared state."""
