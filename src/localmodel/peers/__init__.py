"""peers: agents filling each other's downloads (node to node), in one place.

    protocol      wire format (URLs, piece tables) and the trust rules: which origin digest a
                  peer's file must carry to be used
    source        PeerSource, the Source the engine reads through: pieces from peers, checked
                  against the piece tables, the origin as fallback; PeerClient, PeerHealth
    partial       downloads in progress that this node serves to others while they are written
    server        the HTTP server for verified models and partial pieces
    auth          peer tokens (TokenReview) for both directions
    discovery     which nodes hold a model, from the LocalModelNodes' status
    origin_slots  at most K nodes per model read the origin (Leases)
    fill          the policy: wait for peers, take an origin slot, or read the origin

The agent (node/peer_runtime.py) only wires these to its settings and metrics. Nothing here
imports node/ or controller/; the engine (fetch/) knows nothing of peers.
"""
