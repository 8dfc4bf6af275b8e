"""Servers the pipeline talks to when it fans out: PostgreSQL + an MLflow tracking server."""
