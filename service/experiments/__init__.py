"""Online experiments, the pure part: definitions and sticky assignment (``assignment``), team-draft
interleaving (``interleaving``) and per-arm metrics with their decision rules (``stats``). Nothing here
imports the web framework, the database or the rest of the service."""
