"""Reliability: a reference model, races, fault injection and hostile input."""
