"""The verification service: cryptographic verification of a request's artifacts."""
