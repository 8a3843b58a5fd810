"""One thin module per DVC stage: read params, call grokpipe, write the declared outputs."""
