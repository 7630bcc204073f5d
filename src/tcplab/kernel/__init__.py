"""Pure decoders: bytes or text in, frozen records out. Imports the stdlib only."""
