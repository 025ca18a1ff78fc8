"""axon_router: looks a request's key up, picks a pod inside its subset by cost, and forwards it."""
