"""The serving tests' fixtures: ``settings`` and ``client`` (one real inference process per
module) are the root conftest's; a module that needs other settings overrides ``settings``."""
