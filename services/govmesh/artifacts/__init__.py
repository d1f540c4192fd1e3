"""Artifact formats shared by govmesh services and clients (DESIGN.md section 4)."""

import warnings

# DESIGN.md pins EdDSA (Ed25519) as the algorithm of everything govmesh signs;
# joserfc flags the name as superseded by RFC 9864's "Ed25519", which some
# verifiers do not know yet. The algorithm itself is the same.
warnings.filterwarnings("ignore", message="EdDSA is deprecated via RFC 9864")

MANDATE_TYP = "govmesh-mandate+jwt"
PROOF_TYP = "govmesh-pop+jwt"
ATTESTATION_TYP = "govmesh-attestation+jwt"
GRANT_TYP = "govmesh-grant+jwt"

#: The audience every mandate and grant names.
AUDIENCE = "govmesh"
