"""HTTP layer: dependencies (``deps``), one router per resource (``routes``), combined in ``main``."""
