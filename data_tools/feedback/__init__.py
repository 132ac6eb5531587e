"""Feedback from people: the event store (checks, import, export), resampling by feedback, simulated users."""
