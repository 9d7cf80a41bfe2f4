"""Security: token and DPoP verification, the request envelope, secret masking."""
