"""Storage: SQLAlchemy tables (``tables``) and engine/session construction (``session``)."""
