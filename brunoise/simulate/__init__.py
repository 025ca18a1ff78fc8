"""``brunoise simulate``: a discrete-event fleet simulator in virtual time running the real policy, pick and keys."""
