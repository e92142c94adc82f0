"""The HTTP layer: Flask routes, the OpenAPI description, gunicorn hooks."""
