"""One router per resource; ``service.api.main`` combines them."""
