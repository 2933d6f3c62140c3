"""Settings and other cross-cutting pieces of the service."""
