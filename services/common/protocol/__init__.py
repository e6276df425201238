"""The protocol room: what the parties say to each other, as typed objects, and the one edge where protobuf
messages become those objects (`wire`).

Round plans, uploads and attestations, the public key, class rosters, stream digests, chunking and node
identities. It may import every other room; none of them imports it. Protobuf modules are imported only by `wire`
(and by the servicers and clients at their first line).
"""
