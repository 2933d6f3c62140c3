"""The database below trainer and service: the tables Alembic migrates (``storage.tables``), engines and
sessions (``storage.session``), the one data-access layer (``storage.crud``), and every stored
interaction as the trainer's ``--from-db`` reads it (``storage.export``)."""
