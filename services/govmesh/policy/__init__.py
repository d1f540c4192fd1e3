"""The policy authority: Cedar policies, evaluated default-deny and fail-closed."""
