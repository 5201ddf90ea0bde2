"""Images as arrays: the one decoder (bytes → BGR), resizing, the normalised space."""
