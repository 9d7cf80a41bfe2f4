"""The security envelope: access tokens, key sets and DPoP proofs."""
