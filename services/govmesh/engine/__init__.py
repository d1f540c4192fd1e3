"""The authorization engine: the execution gateway every caller asks first."""
