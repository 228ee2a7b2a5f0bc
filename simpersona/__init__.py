"""SimPersona: discrete buyer types from clickstreams, persona-token LLM agents, browser simulation."""

__version__ = "0.1.0"
