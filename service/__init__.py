"""The online half of aerec: a FastAPI service that serves the trainer's published models.

``service.main.create_app(settings)`` builds the application; ``python -m service``
serves it, ``python -m service migrate`` brings the database schema to head and
``python -m service seed`` loads a dataset into the database.
"""
